"""Stale Unix socket files (sockcat.net.unixstale, and the check in net.sockets that uses it): a live listener's
file means "address in use", a dead one's is replaced, nothing else is touched, and deciding never connects."""

from __future__ import annotations

import errno
import os
import socket
from pathlib import Path

import pytest
from helpers_streams import pair

import sockcat
from sockcat import NetworkError, SockcatError

pytestmark = pytest.mark.timeout(30)


def test_unix_stale_socket_file_is_replaced(short_tmp: Path) -> None:
    path = str(short_tmp / "stale.sock")
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(path)
    dead.listen(1)
    dead.close()  # the file stays: a connect to it is refused
    assert os.path.exists(path)
    with sockcat.listen(f"unix:{path}") as lst:
        client, server = pair(lst)
        with client, server:
            client.sendall(b"fresh")
            assert server.recv_exactly(5) == b"fresh"
    assert not os.path.exists(path)


def test_unix_live_listener_means_address_in_use(short_tmp: Path) -> None:
    path = str(short_tmp / "live.sock")
    with sockcat.listen(f"unix:{path}") as first:
        with pytest.raises(NetworkError) as info:
            sockcat.listen(f"unix:{path}")
        assert info.value.errno == errno.EADDRINUSE
        assert "address in use" in str(info.value)
        assert path in str(info.value)
        assert isinstance(info.value, OSError)
        assert os.path.exists(path)
        assert first.socket.fileno() != -1


def test_unix_failed_second_listen_leaves_the_live_listener_untouched(short_tmp: Path) -> None:
    path = str(short_tmp / "live2.sock")
    with sockcat.listen(f"unix:{path}") as first:
        with pytest.raises(NetworkError):
            sockcat.listen(f"unix:{path}")
        client, server = pair(first)
        with client, server:
            client.sendall(b"ok")
            assert server.recv_exactly(2) == b"ok"


@pytest.mark.parametrize("backend", ["netlink", "proc"])
def test_unix_liveness_is_read_from_the_kernel_table_without_connecting(backend: str, short_tmp: Path) -> None:
    """Both ways of reading the kernel's socket table tell live from stale, and neither connects."""
    from sockcat.net import unixstale as _unixstale

    probe = _unixstale._by_netlink if backend == "netlink" else _unixstale._by_proc

    def ask(path: str) -> bool | None:
        return probe(os.stat(path)) if backend == "netlink" else probe(path, os.stat(path))  # type: ignore[call-arg]

    live = str(short_tmp / "live.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as lst:
        lst.bind(live)
        lst.listen(4)
        assert ask(live) is True
        lst.setblocking(False)
        with pytest.raises(BlockingIOError):
            lst.accept()  # nothing was queued by asking
        # an accepted connection that outlives its listener does not make the file live
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.connect(live)
        lst.setblocking(True)
        accepted, _ = lst.accept()
    with client, accepted:
        assert ask(live) is False

    gram = str(short_tmp / "gram.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as g:
        g.bind(gram)
        assert ask(gram) is True
    assert ask(gram) is False

    rel = "rel-live.sock"
    cwd = os.getcwd()
    os.chdir(short_tmp)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as sp:
            sp.bind(rel)  # bound by a relative path: /proc/net/unix shows it so
            sp.listen(1)
            assert ask(str(short_tmp / rel)) is True
    finally:
        os.chdir(cwd)


def test_unix_second_listen_queues_nothing_on_a_one_shot_listener(short_tmp: Path) -> None:
    """The refused second listen must not leave a connection in the live listener's queue."""
    path = str(short_tmp / "oneshot.sock")
    with sockcat.listen(f"unix:{path}") as first:
        with pytest.raises(NetworkError) as info:
            sockcat.listen(f"unix:{path}")
        assert info.value.errno == errno.EADDRINUSE
        first.socket.setblocking(False)
        with pytest.raises(BlockingIOError):
            first.socket.accept()


def test_unixgram_live_is_in_use_and_stale_is_replaced(short_tmp: Path) -> None:
    path = str(short_tmp / "g.sock")
    with sockcat.open_datagram(f"unixgram:{path}"):
        with pytest.raises(NetworkError) as info:
            sockcat.open_datagram(f"unixgram:{path}")
        assert info.value.errno == errno.EADDRINUSE and path in str(info.value)
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    dead.bind(path)
    dead.close()  # the file stays
    with sockcat.open_datagram(f"unixgram:{path}") as again:
        assert str(again.address) == f"unixgram:{path}"


def test_unix_stale_check_falls_back_to_a_connect_probe(short_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the kernel table cannot be read, the connect probe still tells live from stale."""
    from sockcat.net import unixstale as _unixstale

    monkeypatch.setattr(_unixstale, "_by_netlink", lambda st: None)
    monkeypatch.setattr(_unixstale, "_by_proc", lambda path, st: None)
    path = str(short_tmp / "fallback.sock")
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(path)
    dead.listen(1)
    dead.close()
    with sockcat.listen(f"unix:{path}"):
        with pytest.raises(NetworkError) as info:
            sockcat.listen(f"unix:{path}")
        assert info.value.errno == errno.EADDRINUSE


def test_unix_listen_on_a_regular_file_leaves_it_alone(short_tmp: Path) -> None:
    path = short_tmp / "precious.txt"
    path.write_text("data")
    with pytest.raises(SockcatError) as info:
        sockcat.listen(f"unix:{path}")
    assert isinstance(info.value, OSError)
    assert path.read_text() == "data"
