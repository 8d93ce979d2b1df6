"""Child processes of the harness: each in its own process group, measured from /proc, and all
of them stopped on the way out (normal end, error, Ctrl-C or SIGTERM)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")
_started: list[Proc] = []


@dataclass(frozen=True)
class Usage:
    """CPU seconds (user + system) of a process tree, and its resident memory."""

    cpu_s: float
    rss_bytes: int  # current VmRSS, summed over the tree
    hwm_bytes: int  # VmHWM (peak RSS) of each process, summed over the tree


def _stat_cpu_s(pid: int) -> tuple[int, float]:
    """(parent pid, CPU seconds of the process and of its waited-for children)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state): ppid=4, utime=14, stime=15, cutime=16, cstime=17
    ticks = int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])
    return int(fields[1]), ticks * _TICK_S


def _status_kib(pid: int, keys: tuple[str, ...]) -> dict[str, int]:
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in keys:
            found[name] = int(value.split()[0])
    return found


def descendants(root: int) -> list[int]:
    """The root and every live process below it."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            ppid, _ = _stat_cpu_s(int(entry))
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, ()))
    return found


def usage(pid: int, tree: bool = False) -> Usage | None:
    """CPU and memory of a process (and its descendants when `tree`); None once it is gone."""
    cpu_s, rss, hwm = 0.0, 0, 0
    pids = descendants(pid) if tree else [pid]
    for index, member in enumerate(pids):
        try:
            _, member_cpu_s = _stat_cpu_s(member)
            kib = _status_kib(member, ("VmRSS", "VmHWM"))
        except (OSError, ValueError, IndexError):
            if index == 0:
                return None
            continue
        if "VmRSS" not in kib:  # a zombie: it has exited
            if index == 0:
                return None
            continue
        cpu_s += member_cpu_s
        rss += kib.get("VmRSS", 0) * 1024
        hwm += kib.get("VmHWM", 0) * 1024
    return Usage(cpu_s, rss, hwm)


class Proc:
    """One child process in a new session (its own process group), output to a log file."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        log_path: Path,
        env: dict[str, str] | None = None,
        cwd: Path = ROOT,
    ) -> None:
        self.name = name
        self.log_path = log_path
        log = log_path.open("ab")
        try:
            self.popen = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=cwd,
                env={**os.environ, **(env or {})},
                start_new_session=True,
            )
        finally:
            log.close()
        _started.append(self)

    @property
    def pid(self) -> int:
        """The process id (also its process group id)."""
        return self.popen.pid

    def alive(self) -> bool:
        """Whether it is still running."""
        return self.popen.poll() is None

    def usage(self, tree: bool = False) -> Usage | None:
        """Its CPU and memory now."""
        return usage(self.pid, tree)

    def stop(self, timeout_s: float = 20.0, sig: int = signal.SIGTERM) -> int | None:
        """Signal its whole process group, wait, then SIGKILL the group; returns the exit code."""
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout_s)
        # Anything left in the group (workers, nginx children) goes too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(5)
        if self in _started:
            _started.remove(self)
        return self.popen.returncode

    def tail(self, chars: int = 3000) -> str:
        """The end of its log."""
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


def python_module(
    name: str, module: str, args: list[str], log_path: Path, env: dict[str, str] | None = None
) -> Proc:
    """`python -m module args...` with the harness's interpreter, from the repository root."""
    return Proc(name, [sys.executable, "-m", module, *args], log_path, env)


def stop_all() -> None:
    """Stop every process the harness started and has not stopped yet (newest first)."""
    for proc in reversed(list(_started)):
        proc.stop(timeout_s=5)


def install_signal_handlers() -> None:
    """SIGTERM/SIGHUP behave like Ctrl-C, so every `finally` runs and children are stopped."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, interrupt)
    # Also when started in the background with SIGINT ignored (as non-interactive shells do).
    signal.signal(signal.SIGINT, signal.default_int_handler)


def wait_port(port: int, timeout_s: float, proc: Proc | None = None) -> None:
    """Wait until something listens on 127.0.0.1:port (and the process is still alive)."""
    import socket

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and not proc.alive():
            raise RuntimeError(f"{proc.name} exited early:\n{proc.tail()}")
        with contextlib.suppress(OSError):
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        time.sleep(0.05)
    raise RuntimeError(
        f"nothing listens on port {port} after {timeout_s}s" + (f":\n{proc.tail()}" if proc else "")
    )
