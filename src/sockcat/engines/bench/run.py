"""The entry points: :func:`bench` and :func:`run_plan` run on a loop of their own (SIGTERM ends the run),
:func:`bench_async` on the caller's; more than one worker goes to :mod:`.forked`."""

from __future__ import annotations

import asyncio
import errno
import signal
import ssl
import threading
from typing import Any

from sockcat.core.address import Address
from sockcat.core.errors import NetworkError
from sockcat.core.stats import BenchResult
from sockcat.engines.bench.forked import _result, _run_forked
from sockcat.engines.bench.plan import DEFAULT_WARMUP, BenchPlan, Progress, make_plan
from sockcat.engines.bench.worker import _Worker
from sockcat.net.sockets import SockOpts
from sockcat.serving.process import new_runner


async def bench_async(plan_or_address: BenchPlan | Address | str, **kwargs: Any) -> BenchResult:
    """The asyncio form of :func:`bench` (same arguments). With ``workers`` > 1 the workers are forked
    from a helper thread while this loop keeps running."""
    progress: Progress | None = kwargs.pop("progress", None)
    plan = plan_or_address if isinstance(plan_or_address, BenchPlan) else make_plan(plan_or_address, **kwargs)
    if plan.workers > 1:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, lambda: _run_forked(plan, progress))
    return await _run_here(plan, progress)


async def _run_here(plan: BenchPlan, progress: Progress | None) -> BenchResult:
    """One worker, on the running loop: connect everything, then run."""
    worker = _Worker(plan, plan.connections, plan.requests)
    try:
        await worker.prepare()
    except BaseException:
        await worker.close()
        raise
    part = await worker.run(0.0, progress)
    return _result(plan, [part])


def bench(
    address: Address | str,
    *,
    mode: str = "rtt",
    connections: int | None = None,
    size: int | None = None,
    duration: float | None = None,
    requests: int | None = None,
    pipeline: int = 1,
    reverse: bool = False,
    warmup: float = DEFAULT_WARMUP,
    timeout: float | None = None,
    connect_timeout: float | None = None,
    workers: int = 1,
    sockopts: SockOpts = None,
    source: Address | str | None = None,
    ssl_context: ssl.SSLContext | None = None,
    sni: str | None = None,
    progress: Progress | None = None,
) -> BenchResult:
    """Load ``address`` (an echo, discard or chargen server) and return what was measured.

    ``mode``: ``"rtt"`` (round trips of ``size`` bytes on ``connections`` connections, ``pipeline``
    outstanding on each), ``"throughput"`` (bulk upload, or download with ``reverse``), or
    ``"connect"`` (open, one round trip, close). Runs ``warmup`` seconds unmeasured, then ``duration``
    seconds (default 10) or until ``requests`` requests. ``workers`` > 1 forks that many processes.
    Raises :class:`sockcat.NetworkError` if the first connection fails; later failures are counted
    in ``BenchResult.errors``.
    """
    plan = make_plan(
        address,
        mode=mode,
        connections=connections,
        size=size,
        duration=duration,
        requests=requests,
        pipeline=pipeline,
        reverse=reverse,
        warmup=warmup,
        timeout=timeout,
        connect_timeout=connect_timeout,
        workers=workers,
        sockopts=sockopts,
        source=source,
        ssl_context=ssl_context,
        sni=sni,
    )
    return run_plan(plan, progress)


def run_plan(plan: BenchPlan, progress: Progress | None = None) -> BenchResult:
    """Run a checked plan: in this process for one worker, forked workers otherwise."""
    if plan.workers > 1:
        return _run_forked(plan, progress)

    terminated: list[bool] = []

    async def main() -> BenchResult:
        _on_sigterm(terminated)
        if progress is not None:
            progress("connecting", plan.connect_timeout, 0, 0, None)
        return await _run_here(plan, progress)

    previous = signal.getsignal(signal.SIGTERM)
    in_main = threading.current_thread() is threading.main_thread()
    if in_main:  # held until the loop's own handler is in place (see _on_sigterm)
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        with new_runner() as runner:
            return runner.run(main())
    except asyncio.CancelledError:
        if not terminated:
            raise
    finally:
        if in_main:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
    # SIGTERM ended the run: hand the signal to whoever handled it before (the CLI exits 0).
    signal.raise_signal(signal.SIGTERM)
    raise NetworkError(errno.EINTR, "bench ended by SIGTERM")


def _on_sigterm(terminated: list[bool]) -> None:
    """In the main thread, let SIGTERM cancel the run (a Python-level handler cannot unwind the loop)."""
    if threading.current_thread() is not threading.main_thread():
        return
    task = asyncio.current_task()
    assert task is not None

    def stop() -> None:
        terminated.append(True)
        task.cancel()

    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
