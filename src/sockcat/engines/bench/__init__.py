"""``bench``: a load generator for echo, discard and chargen servers over every socket kind.

Design:

* A worker is one process with one asyncio loop (uvloop when installed). Its connections are
  Protocols driven by callbacks — no task and no coroutine per request — so the client costs about
  what a minimal hand-written uvloop client costs. ``--workers N`` forks N workers (each gets its
  share of ``-c``); the parent starts them together, then adds up their figures
  (:func:`sockcat.core.stats.merge`): counts and histograms add.
* Time line of a run: connect every connection (not measured) → warm-up (traffic, not counted) →
  the window of ``-d`` seconds (or until ``-n`` requests) → close. Only the window is measured; the
  warm-up comes on top of ``-d``.
* Latency goes into a log-bucketed histogram (:class:`sockcat.core.stats.Histogram`): fixed memory, no
  sample list, exact merge across workers.
* Nothing can hang: every connect is bounded by ``-w``, every request by ``--timeout`` (a lost
  datagram or an unanswered stream request is an error, and a stream that timed out is reconnected),
  and the run by its window. A connection the server closes or resets is an error, then reconnected
  with a growing back-off. If the very first connection fails, the run stops at once with that error.
* Datagram kinds carry an 8-byte sequence number at the head of each request (when ``size`` >= 8),
  so a late echo never completes the wrong request. unixpacket has no asyncio transport: its
  sessions are small coroutines on ``sock_recv``/``sock_sendall`` (records stay whole).

The modules: :mod:`.plan` (modes, defaults, :func:`make_plan`, how a failure is named), :mod:`.worker` (one
process's share of the run), :mod:`.sessions` (the stream sessions, on asyncio protocols), :mod:`.datagram`
(datagram and unixpacket sessions, on the socket itself), :mod:`.forked` (``--workers``: forked workers and
their figures added up) and :mod:`.run` (:func:`bench`, :func:`bench_async`, :func:`run_plan`).
"""

from sockcat.engines.bench.plan import MODES, BenchPlan, Progress, make_plan
from sockcat.engines.bench.run import bench, bench_async, run_plan

__all__ = ["MODES", "BenchPlan", "Progress", "bench", "bench_async", "make_plan", "run_plan"]
