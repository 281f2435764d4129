"""Happy eyeballs (RFC 8305): the pure plan (:mod:`sockcat.core.eyeballs`), and the sync and asyncio connects
that both drive it, raced on real loopback sockets with the same addresses: same winner, same timing."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvloop
from helpers_streams import (
    Bg,
    T,
    tcp_listener_fixture,  # noqa: F401  (the tcp_listener fixture)
)
from helpers_streams import closed_port as _closed_port
from hypothesis import given, settings
from hypothesis import strategies as st

import sockcat
from sockcat.core.address import Address
from sockcat.core.eyeballs import ATTEMPT_DELAY, Eyeballs, interleave
from sockcat.net.sockets import _happy_eyeballs
from sockcat.net.sockets import _happy_eyeballs as sync_race
from sockcat.streams.aio import _happy_eyeballs as aio_race

V6, V4 = socket.AF_INET6, socket.AF_INET


def info(family: int, n: int) -> tuple[int, int, int, Any]:
    return (family, socket.SOCK_STREAM, 6, n)


# --- the plan -------------------------------------------------------------------------------------------------


def test_families_alternate_from_the_resolvers_first() -> None:
    rows = [info(V6, 1), info(V6, 2), info(V6, 3), info(V4, 4)]
    assert [r[3] for r in interleave(rows)] == [1, 4, 2, 3]
    rows = [info(V4, 1), info(V6, 2), info(V4, 3), info(V6, 4), info(V6, 5)]
    assert [r[3] for r in interleave(rows)] == [1, 2, 3, 4, 5]
    assert interleave([]) == []


@settings(max_examples=200)
@given(st.lists(st.sampled_from([V4, V6]), min_size=1, max_size=12))
def test_interleave_keeps_every_address_once_and_each_familys_order(families: list[int]) -> None:
    rows = [info(f, n) for n, f in enumerate(families)]
    out = interleave(rows)
    assert sorted(r[3] for r in out) == list(range(len(rows)))
    for fam in (V4, V6):
        assert [r[3] for r in out if r[0] == fam] == [r[3] for r in rows if r[0] == fam]
    assert out[0] == rows[0]
    # no two of one family in a row while the other family still has addresses left
    for k in range(1, len(out)):
        if out[k][0] == out[k - 1][0]:
            assert all(r[0] == out[k][0] for r in out[k:])


def test_the_next_attempt_waits_the_delay_or_starts_when_one_fails() -> None:
    plan = Eyeballs([info(V6, 1), info(V4, 2), info(V6, 3)])
    assert plan.due(0.0) and plan.start(0.0)[3] == 1
    assert not plan.due(0.1) and plan.wait(0.1) == pytest.approx(ATTEMPT_DELAY - 0.1)
    assert plan.due(ATTEMPT_DELAY) and plan.start(ATTEMPT_DELAY)[3] == 2
    plan.failed(ConnectionRefusedError(111, "refused"), 0.3)  # a failure: the next one at once
    assert plan.due(0.3) and plan.start(0.3)[3] == 3
    assert plan.wait(0.3) is None and not plan.lost  # nothing left to start; two still racing
    plan.failed(ConnectionRefusedError(111, "refused"), 0.4)
    plan.failed(TimeoutError(110, "timed out"), 0.5)
    assert plan.lost
    err = plan.error()
    assert isinstance(err, TimeoutError) and isinstance(err.__cause__, ExceptionGroup)
    assert len(err.__cause__.exceptions) == 3  # every failure, the last one included


# --- the two connects, on real sockets ---------------------------------------------------------------------------


@pytest.fixture
def slow_and_good() -> Iterator[tuple[list[tuple[int, int, int, Any]], int]]:
    """Two loopback addresses: ``[::1]:S``, a listener whose backlog is full (a SYN to it is dropped: the attempt
    hangs, as to a host that does not answer), and ``127.0.0.1:G``, a listener that accepts."""
    slow = socket.socket(V6)
    slow.bind(("::1", 0))
    slow.listen(0)
    s_port = slow.getsockname()[1]
    fillers = []
    for _ in range(4):  # fill the queue (the kernel allows backlog + 1)
        f = socket.socket(V6)
        f.setblocking(False)
        f.connect_ex(("::1", s_port))
        fillers.append(f)
    good = socket.socket(V4)
    good.bind(("127.0.0.1", 0))
    good.listen(8)
    g_port = good.getsockname()[1]
    infos = [(V6, socket.SOCK_STREAM, 6, ("::1", s_port, 0, 0)), (V4, socket.SOCK_STREAM, 6, ("127.0.0.1", g_port))]
    try:
        yield infos, g_port
    finally:
        for s in [*fillers, slow, good]:
            s.close()


def _race_sync(infos: list[tuple[int, int, int, Any]], port: int) -> tuple[socket.socket, float]:
    t0 = time.monotonic()
    sock = sync_race(infos, Address.parse(f"tcp://localhost:{port}"), 10.0, (), None)
    return sock, time.monotonic() - t0


def _race_aio(infos: list[tuple[int, int, int, Any]], port: int, use_uvloop: bool) -> tuple[socket.socket, float]:
    async def race() -> tuple[socket.socket, float]:
        t0 = time.monotonic()
        sock = await aio_race(infos, Address.parse(f"tcp://localhost:{port}"), (), None)
        return sock, time.monotonic() - t0

    return uvloop.run(race()) if use_uvloop else asyncio.run(race())


@pytest.mark.parametrize("how", ["sync", "asyncio", "uvloop"])
def test_a_silent_first_address_loses_to_the_second_after_the_delay(
    slow_and_good: tuple[list[tuple[int, int, int, Any]], int], how: str
) -> None:
    infos, port = slow_and_good
    if how == "sync":
        sock, took = _race_sync(infos, port)
    else:
        sock, took = _race_aio(infos, port, how == "uvloop")
    with sock:
        assert sock.getpeername() == ("127.0.0.1", port)
    assert ATTEMPT_DELAY * 0.9 <= took < 3.0, took  # the second attempt started after the delay, not before


@pytest.mark.parametrize("how", ["sync", "asyncio", "uvloop"])
def test_a_refused_first_address_lets_the_second_start_at_once(how: str) -> None:
    dead = socket.socket(V6)
    dead.bind(("::1", 0))
    d_port = dead.getsockname()[1]
    dead.close()  # nothing listens there: refused at once
    with socket.socket(V4) as good:
        good.bind(("127.0.0.1", 0))
        good.listen(8)
        port = good.getsockname()[1]
        infos = [(V6, socket.SOCK_STREAM, 6, ("::1", d_port, 0, 0)), (V4, socket.SOCK_STREAM, 6, ("127.0.0.1", port))]
        sock, took = _race_sync(infos, port) if how == "sync" else _race_aio(infos, port, how == "uvloop")
        with sock:
            assert sock.getpeername() == ("127.0.0.1", port)
        assert took < ATTEMPT_DELAY, took  # no waiting out the delay after a refusal


# --- the sync connect past a refused address, through a real listener ---------------------------------


def test_happy_eyeballs_falls_back_past_a_refused_address(tcp_listener: sockcat.Listener) -> None:
    """Two candidates (refused ::1 first, then the live IPv4 listener): the second wins."""
    port = tcp_listener.address.port
    dead6 = socket.socket(socket.AF_INET6)
    dead6.bind(("::1", 0))
    dead_port = dead6.getsockname()[1]
    dead6.close()
    infos = [
        (socket.AF_INET6, socket.SOCK_STREAM, 6, ("::1", dead_port, 0, 0)),
        (socket.AF_INET, socket.SOCK_STREAM, 6, ("127.0.0.1", port)),
    ]
    acc = Bg(tcp_listener.accept)
    sock = _happy_eyeballs(infos, Address.parse(f"tcp://localhost:{port}"), T, (), None)
    with sock, acc.get() as server:
        assert sock.getpeername() == ("127.0.0.1", port)
        assert sock.gettimeout() == T
        sock.sendall(b"he")
        assert server.recv_exactly(2) == b"he"


def test_happy_eyeballs_every_address_refused() -> None:
    p4 = _closed_port()
    infos = [
        (socket.AF_INET6, socket.SOCK_STREAM, 6, ("::1", p4, 0, 0)),
        (socket.AF_INET, socket.SOCK_STREAM, 6, ("127.0.0.1", p4)),
    ]
    with pytest.raises(ConnectionRefusedError):
        _happy_eyeballs(infos, Address.parse(f"tcp://localhost:{p4}"), T, (), None)
