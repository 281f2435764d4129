"""``relay``: forward between any two endpoints, both directions, until both have ended.

Design (the reasoning the issue asks for):

* One asyncio loop (uvloop when installed) owns every socket, so an idle relayed connection costs two
  sockets and a few small objects: no thread, no pipe, no buffer.
* Plain stream sockets on both sides: a short burst is spliced right in the loop's read callback through the
  loop's own pipe (no copy into Python). A flow that keeps coming (a full chunk) or meets a full destination is
  handed to a worker thread that copies it with ``recv_into``/``send`` through a buffer growing from 256 KiB to
  4 MiB (on Linux loopback that measured 1.3-1.5x faster than splicing through a pipe), until the source has
  been quiet for a moment; then the flow goes back to the loop and its buffer is freed. So threads, buffers and
  pipes belong to moving flows only (pipes count against ``fs.pipe-user-pages-soft``).
* TLS, ``--hexdump``, ``--trace`` and packet sockets take the buffered path: 64 KiB per active direction,
  awaited sends, so a slow reader slows the writer and memory stays bounded.
* Set-up cost is what limits connections per second, so a target that needs no look-up (an IP literal, a Unix
  path) takes a callback path: the listener stays registered and accepts in a batch, the upstream socket is made
  non-blocking and connects with ``connect_ex``, and every connection's sockets sit in one epoll set of the
  relay's own (registered once, events dispatched to bound methods), with no Task or future per connection and
  no address formatted unless ``-v``. Connect time-outs share one timer. Targets given by name go through a
  task per connection (resolution, happy eyeballs), then the same splice machinery.
* EOF on one side becomes shutdown(SHUT_WR) on the other; the opposite direction keeps flowing.
  A reset is passed on as a reset (SO_LINGER 0, then close).
* A client refused by ``--max-conns`` or ``--allow``/``--deny``, or whose upstream connect failed, is closed at
  once without being read: it sees EOF, or a reset if its bytes had already arrived (the kernel answers a close
  with unread data with RST).
* ``--workers N`` forks N-1 workers that die with the parent (``PR_SET_PDEATHSIG``), even a SIGKILLed one.
* Datagram kinds (udp*, unixgram): one upstream socket per client address, closed after the idle time-out.

The modules: :mod:`.common` (the options and what several modules share), :mod:`.splice` (plain stream
connections: the epoll set, a connection's two flows, the worker threads of moving flows), :mod:`.server`
(the stream relay: accepting, the callback path and the task-per-connection path), :mod:`.buffered` (TLS,
hex dumps, traces, packet sockets), :mod:`.dgram` (datagram sessions), :mod:`.run` (``sockcat relay`` on
the serving scaffold) and :mod:`.library` (:func:`relay`, :func:`relay_async`).
"""

from sockcat.engines.relay.common import RelayOptions
from sockcat.engines.relay.library import relay, relay_async
from sockcat.engines.relay.run import run_relay

__all__ = ["RelayOptions", "relay", "relay_async", "run_relay"]
