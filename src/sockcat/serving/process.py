"""Process-level helpers the engines share: descriptor limits and forked workers' lifetime."""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import asyncio


def raise_nofile_limit() -> int:
    """Raise the open-files limit as far as the OS allows; return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        with open("/proc/sys/fs/nr_open") as f:
            ceiling = int(f.read())
    except (OSError, ValueError):
        ceiling = hard
    for want in (max(hard, min(ceiling, 1 << 20)), hard):
        if want == resource.RLIM_INFINITY or want <= soft:
            continue
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(want, hard)))
            return want
        except (ValueError, OSError):
            continue
    return soft


def die_with_parent(parent: int) -> None:
    """In a forked worker: get SIGTERM when the parent dies, even by SIGKILL (Linux ``PR_SET_PDEATHSIG``).

    SIGTERM is the graceful stop. A parent that died before the request was made is caught by the
    ``getppid`` check after it.
    """
    if sys.platform == "linux":
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM), 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
    if os.getppid() != parent:
        os._exit(0)


def end_workers(pids: list[int]) -> None:
    """SIGTERM every forked worker, then reap them all (each ends its own connections on SIGTERM)."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    for pid in pids:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)


def new_runner() -> asyncio.Runner:
    """An asyncio runner on uvloop when it is installed."""
    import asyncio  # here, not at the top: the threaded commands (send, recv, listen) start 25 ms sooner

    try:
        import uvloop
    except ImportError:  # pragma: no cover
        return asyncio.Runner()
    return asyncio.Runner(loop_factory=uvloop.new_event_loop)


# Signals a server ends on: only the main thread may take them (see start_thread).
STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}


def start_thread(target: Callable[..., Any], *args: Any, name: str) -> threading.Thread:
    """Start a daemon thread that never takes SIGTERM, SIGINT or SIGHUP (nor do the threads it starts).

    The kernel hands a process's signal to any thread that does not block it. Python runs the handler in the
    main thread, but only once that thread wakes up: a main thread blocked in ``accept()`` would sleep through
    the SIGTERM that a session thread took. Blocked here, the signals always reach the main thread and
    interrupt its system call."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        t = threading.Thread(target=target, args=args, name=name, daemon=True)
        t.start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
    return t
