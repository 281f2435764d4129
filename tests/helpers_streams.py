"""Helpers shared by the tests of the sync library's streams (streams, net, TLS streams, happy eyeballs): a
listener fixture, a connected (client, server) pair, reading to EOF. Import the fixture by its function name
(``tcp_listener_fixture``); tests ask for it as ``tcp_listener``."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import Bg as _Bg

import sockcat

T = 5.0  # every blocking call of the tests using these helpers is bounded by this


class Bg(_Bg):
    TIMEOUT = T


def abstract_name() -> str:
    return f"@sockcat-lib-{uuid.uuid4().hex}"


@pytest.fixture(name="tcp_listener")
def tcp_listener_fixture() -> Iterator[sockcat.Listener]:
    with sockcat.listen("tcp://127.0.0.1:0") as lst:
        lst.settimeout(T)
        yield lst


def pair(lst: sockcat.Listener, **kw: Any) -> tuple[sockcat.Stream, sockcat.Stream]:
    """(client, server) streams connected through ``lst`` (the accept runs in a thread for TLS)."""
    lst.settimeout(T)
    acc = Bg(lst.accept)
    client = sockcat.connect(str(lst.address), timeout=T, **kw)
    server = acc.get()
    server.settimeout(T)
    return client, server


def pair_to(lst: sockcat.Listener, target: str, **kw: Any) -> tuple[sockcat.Stream, sockcat.Stream]:
    acc = Bg(lst.accept)
    client = sockcat.connect(target, timeout=T, **kw)
    server = acc.get()
    server.settimeout(T)
    return client, server


def read_to_eof(s: sockcat.Stream) -> bytes:
    out = bytearray()
    while data := s.recv():
        out += data
    return bytes(out)


def closed_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
