"""What the benchmark scripts share: the processes they start (stopped by PID, never by name), CPU time from /proc,
ports, readiness polls, tool versions and sizes.

The scripts run as ``python bench/NAME.py`` from the repository root, so this directory is on ``sys.path`` and
they ``import _common``.
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import hashlib
import importlib
import importlib.util
import os
import platform
import re
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

CLK_TCK = os.sysconf("SC_CLK_TCK")
LISTEN_TIMEOUT = 10.0


def _compile_sockcat() -> None:
    """sockcat's modules compiled, as a user's are: pip compiles them when it installs a wheel. An editable checkout
    run with PYTHONDONTWRITEBYTECODE=1 (as this machine's environment sets) never keeps its bytecode and compiles
    every module again in every process, about 60 ms of start-up that no installed sockcat pays."""
    spec = importlib.util.find_spec("sockcat")
    if spec is not None and spec.origin is not None:
        compileall.compile_dir(str(Path(spec.origin).parent), quiet=1)


_compile_sockcat()


# --- /proc ---------------------------------------------------------------------------------------------------


def stat_fields(pid: int) -> list[str] | None:
    """``/proc/PID/stat`` from field 3 (state) on, or None once the process is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None


def descendants(pid: int) -> list[int]:
    """The live descendants of ``pid`` (every thread's children, recursively)."""
    found: list[int] = []
    todo = [pid]
    while todo:
        p = todo.pop()
        with contextlib.suppress(OSError):
            for tid in os.listdir(f"/proc/{p}/task"):
                with contextlib.suppress(OSError), open(f"/proc/{p}/task/{tid}/children") as f:
                    for child in (int(x) for x in f.read().split()):
                        if child not in found:
                            found.append(child)
                            todo.append(child)
    return found


def alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    fields = stat_fields(pid)
    return fields is not None and fields[0] != "Z"


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its live descendants, each with the children it has reaped
    (socat's fork children count once they are gone)."""
    ticks = 0
    for p in (pid, *descendants(pid)):
        fields = stat_fields(p)
        if fields is not None:  # stat fields 14-17 (utime stime cutime cstime) are indices 11-14 here
            ticks += int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])
    return ticks / CLK_TCK


# --- processes -----------------------------------------------------------------------------------------------


class Procs:
    """The processes a script started. ``stop`` signals only them and their own descendants, by PID.

    With ``work``, every process's stderr goes to its own file there (``stderr_path[p.pid]``)."""

    def __init__(self, work: Path | None = None) -> None:
        self.work = work
        self.started: list[subprocess.Popen[bytes]] = []
        self.stderr_path: dict[int, Path] = {}

    def start(
        self, argv: list[str], *, stdin: Any = subprocess.DEVNULL, stdout: Any = None, stderr: Path | None = None
    ) -> subprocess.Popen[bytes]:
        if stderr is None and self.work is not None:
            stderr = self.work / f"p{len(self.started)}-{time.monotonic_ns()}.err"
        out = stdout if stdout is not None else subprocess.DEVNULL
        if stderr is None:
            p = subprocess.Popen(argv, stdin=stdin, stdout=out, stderr=subprocess.DEVNULL)
        else:
            with open(stderr, "wb") as err:
                p = subprocess.Popen(argv, stdin=stdin, stdout=out, stderr=err)
            self.stderr_path[p.pid] = stderr
        self.started.append(p)
        return p

    def stderr_text(self, p: subprocess.Popen[bytes]) -> str:
        path = self.stderr_path.get(p.pid)
        return path.read_text(errors="replace") if path is not None else ""

    def stop(self, p: subprocess.Popen[bytes], grace: float = 3.0) -> None:
        """SIGTERM to ``p`` and its descendants; SIGKILL to whoever is left after ``grace`` seconds."""
        kids = descendants(p.pid) if p.poll() is None else []
        for pid in (p.pid, *kids):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout=grace)
        if p.poll() is None:
            p.kill()
            p.wait(timeout=5)
        for pid in kids:
            while alive(pid) and time.monotonic() < deadline:
                time.sleep(0.02)
            if alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        for f in (p.stdin, p.stdout):
            if f is not None:
                with contextlib.suppress(OSError):
                    f.close()
        with contextlib.suppress(ValueError):
            self.started.remove(p)

    def stop_all(self, grace: float = 1.0) -> None:
        for p in list(self.started):
            self.stop(p, grace=grace)


# --- sockets -------------------------------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ss(args: list[str]) -> str:
    return subprocess.run(["ss", *args], capture_output=True, text=True, timeout=10).stdout


def wait_tcp(port: int, p: subprocess.Popen[bytes], timeout: float = LISTEN_TIMEOUT) -> None:
    """Poll ``ss -ltn`` (no connection made) until something listens on ``port``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if re.search(rf":{port}\s", _ss(["-ltnH", f"sport = :{port}"])):
            return
        if p.poll() is not None:
            raise RuntimeError(f"{p.args!r} exited with {p.returncode} before listening")
        time.sleep(0.02)
    raise RuntimeError(f"nothing listens on port {port} after {timeout:g} s ({p.args!r})")


def wait_unix(path: str, p: subprocess.Popen[bytes], timeout: float = LISTEN_TIMEOUT) -> None:
    """Poll ``ss -lxn`` (no connection made) until a unix stream socket listens on ``path``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path in _ss(["-lxnH"]):
            return
        if p.poll() is not None:
            raise RuntimeError(f"{p.args!r} exited with {p.returncode} before listening")
        time.sleep(0.02)
    raise RuntimeError(f"nothing listens on {path} after {timeout:g} s ({p.args!r})")


# --- what was measured ---------------------------------------------------------------------------------------


def tool_version(argv: list[str], pattern: str) -> str | None:
    """The first group of ``pattern`` in the output of ``argv``, or None."""
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(pattern, out.stdout + out.stderr)
    return m.group(1) if m else None


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB pieces."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def source_digest(module: str = "sockcat.engines.relay") -> str:
    """sha256 (first 12 hex digits) of a sockcat module's source (every ``.py`` of it, in order, for a package), to
    tie figures to the code measured."""
    try:
        path = Path(importlib.import_module(module).__file__ or "")
        files = sorted(path.parent.rglob("*.py")) if path.name == "__init__.py" else [path]
        h = hashlib.sha256()
        for f in files:
            h.update(f.read_bytes())
        return h.hexdigest()[:12]
    except (ImportError, OSError):
        return "?"


def machine(**extra: Any) -> dict[str, Any]:
    """The machine and the versions of everything a benchmark runs side by side."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        uv = version("uvloop")
    except PackageNotFoundError:
        uv = "not installed"
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "uvloop": uv,
        "sockcat": tool_version(["sockcat", "--version"], r"(\d+\.\d+\S*)"),
        "socat": tool_version(["socat", "-V"], r"socat version (\S+)"),
        "ncat": tool_version(["ncat", "--version"], r"Version (\S+)"),
        "iperf3": tool_version(["iperf3", "--version"], r"iperf (\S+)"),
        **extra,
    }


def parse_size(text: str) -> int:
    """``1G``, ``64M``, ``512K``, ``1GiB``, ``1048576`` -> bytes (binary units, as ``head -c``)."""
    m = re.fullmatch(r"\s*(\d+)\s*([KMGT]?)(?:i?B)?\s*", text, re.I)
    if not m:
        raise argparse.ArgumentTypeError(f"bad size {text!r} (e.g. 1G, 256M, 65536)")
    return int(m.group(1)) << (10 * " KMGT".index(m.group(2).upper() or " "))


def listening_address(procs: Procs, p: subprocess.Popen[bytes], timeout: float = LISTEN_TIMEOUT) -> str:
    """The address in sockcat's ``listening on ADDRESS`` line on ``p``'s stderr (started with a stderr file)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = procs.stderr_text(p)
        m = re.search(r"^listening on (\S+)$", text, re.M)
        if m:
            return m.group(1)
        if p.poll() is not None:
            raise RuntimeError(f"{p.args!r} exited with {p.returncode}: {text[-500:]}")
        time.sleep(0.02)
    raise RuntimeError(f"no 'listening on' line from {p.args!r} after {timeout:g} s")
