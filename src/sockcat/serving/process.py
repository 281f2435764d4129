"""Process-level helpers the engines share: descriptor limits and forked workers' lifetime."""

from __future__ import annotations

import contextlib
import fcntl
import os
import resource
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from types import FrameType
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


# A signal the helper below interrupts the main thread with. Ignored by default: one that arrives after the
# handlers are restored does nothing.
_NUDGE = signal.SIGURG
_NUDGE_AFTER = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0)  # seconds between nudges, until the block ends


def _out_of_the_way(fd: int) -> int:
    """``fd`` moved to 100 or above, where it does not shift the descriptors a ``--trace`` shows: a command's
    first socket stays fd 3."""
    try:
        high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 100)
    except OSError:  # a descriptor limit below 100
        return fd
    os.close(fd)
    return high


@contextlib.contextmanager
def handled_promptly(handlers: dict[signal.Signals, Callable[[int, FrameType | None], Any]]) -> Iterator[None]:
    """Install signal ``handlers`` for the block (main thread only), and make each run even when its signal lands
    just before the main thread enters a blocking call.

    Python runs a handler in the main thread at its next bytecode boundary; a blocking system call is cut short
    (``EINTR``) so that it can. A signal that arrives after the last boundary but before the call (``accept``, a
    lock's wait) cuts nothing short: the call blocks with the handler still pending — for ever, in a server that
    waits for its next client. On a loaded machine that was about one SIGTERM in a thousand. So the C-level
    handler also writes the signal's number to a pipe (``signal.set_wakeup_fd``), and a helper thread that reads it
    interrupts the main thread with a harmless signal a few times, until the block ends."""
    main = threading.main_thread().ident
    assert main is not None and threading.get_ident() == main, "signal handlers belong to the main thread"
    rfd, wfd = (_out_of_the_way(fd) for fd in os.pipe2(os.O_CLOEXEC))
    os.set_blocking(wfd, False)
    done = threading.Event()
    stops = {int(signum) for signum in handlers}

    def nudge() -> None:
        try:
            while (got := os.read(rfd, 64)) and not done.is_set():
                if stops.intersection(got):
                    for delay in _NUDGE_AFTER:
                        if done.wait(delay):
                            return
                        signal.pthread_kill(main, _NUDGE)
        finally:
            os.close(rfd)

    # The signals wait while the handlers go in and come out: a handler that raises there would leave the rest
    # half done. One that came meanwhile runs when the mask is restored (a new handler inside the block, the
    # previous one after it).
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, handlers)
    previous = {signum: signal.signal(signum, handler) for signum, handler in handlers.items()}
    previous[_NUDGE] = signal.signal(_NUDGE, lambda signum, frame: None)
    old_fd = signal.set_wakeup_fd(wfd, warn_on_full_buffer=False)
    start_thread(nudge, name="sockcat signals")
    try:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_BLOCK, handlers)
        done.set()
        signal.set_wakeup_fd(old_fd)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        with contextlib.suppress(OSError):
            os.write(wfd, b"\0")  # wakes the helper, which sees the block ended (a forked child may hold wfd)
        os.close(wfd)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
