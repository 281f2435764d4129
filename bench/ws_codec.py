#!/usr/bin/env python3
"""The two sans-I/O WebSocket libraries side by side on the bulk path, in one process, interleaved: the frame
layers of ``websockets`` (which sockcat uses) and of ``wsproto``.

Measured (medians of --runs rounds, each library once per round, in alternating order):

* client -> server bulk: a client encodes (and masks) 64 KiB binary messages, the server parses (and unmasks)
  them; MiB/s of payload through both together, as a ws -> tcp relay's listening side and a tcp -> ws relay's
  client side do;
* small messages: 64 B binary messages encoded by the client and parsed by the server, messages/s.

Neither side touches a socket: this is the CPU cost of the protocol layer alone, which is what bounds a Python
relay. Run from the repository root: ``python bench/ws_codec.py`` (about 20 s). Output: Markdown on stdout.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Generator

from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader
from wsproto.frame_protocol import FrameProtocol

KIB64 = 64 * 1024


def websockets_pair(size: int, count: int) -> float:
    """Seconds to encode ``count`` client messages of ``size`` bytes and parse them on the server side."""
    payload = b"x" * size
    reader = StreamReader()
    got = 0

    def parser() -> Generator[None, None, None]:
        nonlocal got
        while True:
            frame = yield from Frame.parse(reader.read_exact, mask=True, max_size=None)
            got += len(frame.data)

    gen = parser()
    next(gen)
    start = time.perf_counter()
    batch = []
    for i in range(count):
        batch.append(Frame(Opcode.BINARY, payload).serialize(mask=True))
        if len(batch) == 16 or i == count - 1:
            reader.feed_data(b"".join(batch))
            batch.clear()
            next(gen)
    elapsed = time.perf_counter() - start
    assert got == size * count
    return elapsed


def wsproto_pair(size: int, count: int) -> float:
    payload = b"x" * size
    client = FrameProtocol(client=True, extensions=[])
    server = FrameProtocol(client=False, extensions=[])
    got = 0
    start = time.perf_counter()
    batch = []
    for i in range(count):
        batch.append(client.send_data(payload, fin=True))
        if len(batch) == 16 or i == count - 1:
            server.receive_bytes(b"".join(batch))
            batch.clear()
            for frame in server.received_frames():
                got += len(frame.payload)
    elapsed = time.perf_counter() - start
    assert got == size * count
    return elapsed


def median_rate(fn: Callable[[int, int], float], size: int, count: int, runs: list[float]) -> None:
    runs.append(count / fn(size, count))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    cases = [("bulk 64 KiB", KIB64, 4000), ("small 64 B", 64, 200_000)]
    results: dict[tuple[str, str], list[float]] = {}
    libs = [("websockets", websockets_pair), ("wsproto", wsproto_pair)]
    for r in range(args.runs):
        for name, size, count in cases:
            for lib, fn in libs if r % 2 == 0 else libs[::-1]:
                median_rate(fn, size, count, results.setdefault((name, lib), []))
    print("| case | websockets | wsproto | websockets / wsproto |")
    print("|---|---:|---:|---:|")
    for name, size, _count in cases:
        a = statistics.median(results[(name, "websockets")])
        b = statistics.median(results[(name, "wsproto")])
        print(f"| {name} (client encode + server parse) | {_unit(a, size)} | {_unit(b, size)} | {a / b:.2f} |")


def _unit(rate: float, size: int) -> str:
    return f"{rate * size / 2**20:,.0f} MiB/s" if size >= KIB64 else f"{rate:,.0f} msg/s"


if __name__ == "__main__":
    main()
