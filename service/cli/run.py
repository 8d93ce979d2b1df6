"""`run`: the relay (one process, or a supervisor of --workers processes)."""

from __future__ import annotations

import argparse
import gc
import logging
import os
from typing import Final

from service.cli import common
from service.errors import UsageError

LOG_LEVELS = ("debug", "info", "warning", "error")

# The relay holds thousands of records in flight, each a few tracked containers that outlive a
# young collection; at CPython's default (700, 10, 10) the collector re-scanned them several
# times a second: 3.7 µs CPU per delivery with five vendors, 0.7 µs at these thresholds. The
# relay makes little cyclic garbage, so collecting less often costs no memory worth counting.
GC_THRESHOLDS: Final = (10_000, 10, 10)
GC_THRESHOLD_ENV: Final = "RELAY_GC_THRESHOLD"  # the first threshold; 700 is CPython's own


def tune_gc() -> None:
    """Raise the collector's first threshold (RELAY_GC_THRESHOLD overrides it)."""
    first = GC_THRESHOLDS[0]
    given = os.environ.get(GC_THRESHOLD_ENV, "").strip()
    if given:
        if not given.isdigit() or int(given) < 1:
            raise UsageError(f"{GC_THRESHOLD_ENV}={given[:20]!r}: give a whole number above 0")
        first = int(given)
    gc.set_threshold(first, *GC_THRESHOLDS[1:])


def cmd_run(args: argparse.Namespace) -> int:
    """Run the relay until SIGTERM/SIGINT, then drain and exit 0."""
    import msgspec

    from service.app import Relay
    from service.config import load_config, plaintext_warning

    path = common.config_path(args)
    config = load_config(path)
    if args.http_port is not None or args.http_host is not None:
        http = msgspec.structs.replace(
            config.http,
            port=config.http.port if args.http_port is None else args.http_port,
            host=config.http.host if args.http_host is None else args.http_host,
        )
        config = msgspec.structs.replace(config, http=http)
    common.setup_logging(args.log_level)
    warning = plaintext_warning(config)
    if warning:
        logging.getLogger("conversion_relay.config").warning(warning)
    common.vendor_names(config, args.vendor, enabled_only=True)
    workers = config.workers if args.workers is None else args.workers
    tune_gc()  # the supervisor and each worker (they start through this command too)
    if workers > 1:
        from service.workers import Supervisor

        code: int = common.run_async(Supervisor(config, path, workers, args.vendor).run())
        return code
    code = common.run_async(Relay(config, vendors=args.vendor or None).run())
    return code


def add_commands(command: common.AddCommand) -> None:
    """Add `run`."""
    run = command("run", "run the relay")
    run.add_argument("--config", help=common.CONFIG_HELP)
    run.add_argument(
        "--vendor",
        action="append",
        metavar="NAME",
        help="run only this vendor's pipeline (repeatable; default: every enabled vendor)",
    )
    run.add_argument(
        "--log-level",
        choices=LOG_LEVELS,
        default=os.environ.get("RELAY_LOG_LEVEL", "info").lower(),
        help="log level (also $RELAY_LOG_LEVEL)",
    )
    run.add_argument(
        "--workers",
        type=int,
        help="relay processes in this container (default: the config's `workers`, 1)",
    )
    run.add_argument("--http-port", type=common.port, help="override http.port (0..65535)")
    run.add_argument("--http-host", help="override http.host")
    run.set_defaults(func=cmd_run)
