"""`dev` (everything on this machine, with demo traffic) and `fault` (break a dev vendor)."""

from __future__ import annotations

import argparse
from pathlib import Path

from service.cli import common
from service.core.faults import MODES as FAULT_MODES
from service.core.faults import FaultValueError, checked_value, value_help
from service.errors import RelayError, UsageError


def cmd_dev(args: argparse.Namespace) -> int:
    """Embedded broker, sandboxes, relay and demo traffic with a live view."""
    from service.devtools.dev import DevOptions, run_dev

    common.setup_logging("error")  # the live view is the output; logs would tear it
    common.quiet_kafka_logs()
    options = DevOptions(
        events_per_s=args.rate,
        http_port=args.port,
        chaos=args.chaos,
        control_port=args.control_port,
        config_out=args.write_config,
    )
    code: int = common.run_async(run_dev(options))
    return code


def cmd_fault(args: argparse.Namespace) -> int:
    """Break (or heal) one vendor of a running `dev` through its control endpoint."""
    import json
    import urllib.error
    import urllib.parse
    import urllib.request

    from service.devtools.paths import default_config_path, state_path

    try:  # checked here too, so a wrong value is a usage error before anything is sent
        value = checked_value(args.mode, args.value)
    except FaultValueError as exc:
        raise UsageError(str(exc)) from None
    url = args.control
    if url is None:
        path = Path(args.state) if args.state else state_path(default_config_path())
        try:
            url = json.loads(path.read_text())["control_url"]
        except (OSError, ValueError, KeyError) as exc:
            raise RelayError(
                f"no running dev mode found ({path}: {exc.__class__.__name__}); "
                "start `conversion-relay dev` or give --control URL"
            ) from exc
    query = f"?value={value:.12g}" if value is not None else ""
    name = urllib.parse.quote(args.vendor)
    request = urllib.request.Request(f"{url}/vendors/{name}/{args.mode}{query}", method="POST")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            answer = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        detail = json.loads(exc.read() or b"{}").get("error", exc.reason)
        raise UsageError(str(detail)) from exc
    except (urllib.error.URLError, OSError) as exc:
        raise RelayError(f"cannot reach the dev control endpoint at {url}: {exc}") from exc
    print(f"{answer['vendor']}: {answer['state']}")
    return 0


def add_commands(command: common.AddCommand) -> None:
    """Add `dev` and `fault`."""
    dev = command("dev", "embedded broker, sandboxes, relay and demo traffic, with a live view")
    dev.add_argument(
        "--rate", type=common.positive_rate, default=20.0, help="demo events per second"
    )
    dev.add_argument(
        "--port", type=common.port, default=8080, help="metrics/status port (0 = pick a free one)"
    )
    dev.add_argument(
        "--chaos",
        action="store_true",
        help="run the fault tour: a vendor down 30 s, one at 30%% 5xx, one answering 429 with "
        "Retry-After, a burst of malformed events",
    )
    dev.add_argument(
        "--control-port",
        type=common.port,
        default=0,
        help="port of the fault-injection control endpoint (0 = pick a free one)",
    )
    dev.add_argument(
        "--write-config",
        metavar="FILE",
        help="where to write the running stack's config (default: a file in the temp dir)",
    )
    dev.set_defaults(func=cmd_dev)

    fault = command("fault", "break or heal a vendor of a running `dev` (its sandbox)")
    fault.add_argument("vendor", help="the dev vendor, e.g. altcraft")
    fault.add_argument(
        "mode",
        choices=FAULT_MODES,
        help="down: connection refused; up: listen again; errors: answer a share with 503; "
        "throttle: answer 429 with Retry-After; reject: the next valid requests get the "
        "vendor's rejection; slow: latency before each answer; ok: clear every fault",
    )
    fault.add_argument("value", nargs="?", metavar="VALUE", help=value_help().replace("%", "%%"))
    fault.add_argument("--state", metavar="FILE", help="dev mode's state file (default: its own)")
    fault.add_argument("--control", metavar="URL", help="the control endpoint instead of --state")
    fault.set_defaults(func=cmd_fault)
