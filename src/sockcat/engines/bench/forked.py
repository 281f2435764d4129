"""``--workers N``: forked worker processes, started together at a common time, their progress gathered,
and their figures added up (:func:`sockcat.core.stats.merge`)."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import multiprocessing
import multiprocessing.connection
import os
import signal
import time
from typing import Any, cast

from sockcat.core.errors import NetworkError
from sockcat.core.stats import BenchResult, WorkerResult, merge
from sockcat.engines.bench.plan import BenchPlan, Progress
from sockcat.engines.bench.worker import _Worker
from sockcat.serving.process import die_with_parent, new_runner


def _split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def _result(plan: BenchPlan, parts: list[WorkerResult]) -> BenchResult:
    return merge(
        parts,
        mode=plan.mode,
        address=str(plan.address),
        size=plan.size,
        workers=plan.workers,
        pipeline=plan.pipeline,
        warmup=plan.warmup,
        reverse=plan.reverse,
    )


# The parent and its workers speak over a pipe: ("ready",) / ("fatal", message, errno) from a worker,
# ("go", monotonic start) from the parent, then ("progress", requests, bytes) and ("done", result).


def _worker_main(plan: BenchPlan, connections: int, limit: int | None, pipe: Any, report: bool, parent: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles ^C and ends its workers
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
    die_with_parent(parent)
    code = 0
    try:
        with new_runner() as runner:
            runner.run(_worker_async(plan, connections, limit, pipe, report))
    except BaseException as exc:
        code = 1
        with contextlib.suppress(Exception):
            pipe.send(("fatal", str(exc) or type(exc).__name__, getattr(exc, "errno", None) or errno.EIO))
    finally:
        with contextlib.suppress(Exception):
            pipe.close()
        os._exit(code)


async def _worker_async(plan: BenchPlan, connections: int, limit: int | None, pipe: Any, report: bool) -> None:
    loop = asyncio.get_running_loop()
    worker = _Worker(plan, connections, limit)
    try:
        await worker.prepare()
    except BaseException:
        await worker.close()
        raise
    pipe.send(("ready",))
    readable: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not readable.done():
            readable.set_result(None)

    loop.add_reader(pipe.fileno(), wake)
    await readable
    loop.remove_reader(pipe.fileno())
    msg = pipe.recv()
    if msg[0] != "go":
        await worker.close()
        return

    def send_progress(phase: str, left: float, requests: int, nbytes: int, p99_us: float | None) -> None:
        with contextlib.suppress(OSError):
            pipe.send(("progress", phase, left, requests, nbytes, p99_us))

    part = await worker.run(max(0.0, float(msg[1]) - time.monotonic()), send_progress if report else None)
    pipe.send(("done", part.to_dict()))


def _run_forked(plan: BenchPlan, progress: Progress | None) -> BenchResult:
    ctx = multiprocessing.get_context("fork")
    shares = _split(plan.connections, plan.workers)
    limits: list[int | None] = (
        [max(1, n) for n in _split(plan.requests, plan.workers)] if plan.requests is not None else [None] * plan.workers
    )
    procs: list[Any] = []
    pipes: list[Any] = []
    finished = False
    try:
        for share, limit in zip(shares, limits, strict=True):
            parent_end, child_end = ctx.Pipe()
            p = ctx.Process(
                target=_worker_main,
                args=(plan, share, limit, child_end, progress is not None, os.getpid()),
                daemon=True,
            )
            p.start()
            child_end.close()
            procs.append(p)
            pipes.append(parent_end)
        if progress is not None:
            progress("connecting", plan.connect_timeout, 0, 0, None)
        # 1. every worker connected (or one failed: then the run is over)
        deadline = time.monotonic() + plan.connect_timeout * 2 + 10.0
        waiting = set(range(len(pipes)))
        while waiting:
            left = deadline - time.monotonic()
            if left <= 0:
                raise NetworkError(errno.ETIMEDOUT, f"connect {plan.address}: workers did not connect in time")
            for end in multiprocessing.connection.wait([pipes[i] for i in waiting], timeout=left):
                i = pipes.index(end)
                msg = _recv(end)
                if msg[0] == "ready":
                    waiting.discard(i)
                elif msg[0] == "fatal":
                    raise NetworkError(int(msg[2]), str(msg[1]))
        # 2. a common start, so every worker measures the same window
        start = time.monotonic() + 0.02
        for end in pipes:
            end.send(("go", start))
        # 3. their results
        window = plan.warmup + (plan.duration if plan.duration is not None else 0.0)
        hard = None if plan.duration is None else start + window + plan.timeout + 10.0
        parts: dict[int, WorkerResult] = {}
        latest: dict[int, tuple[str, float, int, int, float | None]] = {}
        while len(parts) < len(pipes):
            live = [pipes[i] for i in range(len(pipes)) if i not in parts]
            timeout = None if hard is None else max(0.0, hard - time.monotonic())
            ready = multiprocessing.connection.wait(live, timeout=timeout)
            if not ready:
                break
            for end in ready:
                i = pipes.index(end)
                msg = _recv(end)
                if msg[0] == "progress" and progress is not None:
                    latest[i] = (msg[1], msg[2], msg[3], msg[4], msg[5])
                    phases = {v[0] for v in latest.values()}
                    phase = "measuring" if "measuring" in phases else next(iter(phases))
                    p99s = [v[4] for v in latest.values() if v[4] is not None]
                    progress(
                        phase,
                        max(v[1] for v in latest.values()),
                        sum(v[2] for v in latest.values()),
                        sum(v[3] for v in latest.values()),
                        max(p99s) if p99s else None,  # (the slowest worker's: p99s do not merge)
                    )
                elif msg[0] == "done":
                    parts[i] = WorkerResult.from_dict(msg[1])
                elif msg[0] == "fatal":
                    lost = WorkerResult(connections=shares[i])
                    lost.add_error("worker", str(msg[1]))
                    parts[i] = lost
        for i in range(len(pipes)):
            if i not in parts:
                lost = WorkerResult(connections=shares[i])
                lost.add_error("worker", f"bench worker {i + 1} did not report in time")
                parts[i] = lost
        finished = True
        return _result(plan, [parts[i] for i in range(len(pipes))])
    finally:
        if not finished:  # an error or a signal: the workers have nothing more to give
            for p in procs:
                with contextlib.suppress(OSError):
                    p.terminate()
        for end in pipes:
            with contextlib.suppress(OSError):
                end.close()
        for p in procs:
            p.join(timeout=2.0)
            if p.is_alive():
                p.kill()
                p.join(timeout=2.0)


def _recv(end: Any) -> tuple[Any, ...]:
    try:
        return cast(tuple[Any, ...], end.recv())
    except (EOFError, OSError):
        return ("fatal", "a bench worker ended without a result", errno.EIO)
