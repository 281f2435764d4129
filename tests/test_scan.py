"""sockcat scan: real listeners on loopback, nmap as the cross-check, and a network namespace whose firewall drops
packets for the "filtered" state."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator

import pytest
from conftest import TIMEOUT, require, run_sockcat
from hypothesis import given
from hypothesis import strategies as st

import sockcat
from sockcat import aio
from sockcat.core.errors import UsageError
from sockcat.engines.scan import parse_ports


@pytest.fixture
def tcp_ports() -> Iterator[tuple[list[int], list[int]]]:
    """(open ports: listening sockets, closed ports: bound for a moment, then released)."""
    listening = [socket.create_server(("127.0.0.1", 0)) for _ in range(3)]
    closed = []
    for _ in range(3):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            closed.append(s.getsockname()[1])
    yield [s.getsockname()[1] for s in listening], closed
    for s in listening:
        s.close()


def _ports_arg(*groups: list[int]) -> str:
    return ",".join(str(p) for g in groups for p in g)


def test_tcp_scan_json(tcp_ports: tuple[list[int], list[int]]) -> None:
    open_ports, closed = tcp_ports
    res = run_sockcat("scan", "127.0.0.1", _ports_arg(open_ports, closed), "--json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["host"] == "127.0.0.1"
    assert out["open"] == sorted(open_ports)
    assert sorted(r["port"] for r in out["results"]) == sorted(open_ports)  # closed ports are not listed
    assert all(r["proto"] == "tcp" and r["state"] == "open" and isinstance(r["service"], str) for r in out["results"])
    assert out["counts"] == {"open": 3, "closed": 3}
    assert res.stderr == b""


def test_tcp_scan_agrees_with_nmap(tcp_ports: tuple[list[int], list[int]]) -> None:
    """nmap's own TCP connect scan (-sT) of the same ports finds the same open ones."""
    nmap = require("nmap")
    open_ports, closed = tcp_ports
    ports = _ports_arg(open_ports, closed)
    got = json.loads(run_sockcat("scan", "127.0.0.1", ports, "--json").stdout)
    out = subprocess.run([nmap, "-sT", "-Pn", "-n", "-p", ports, "-oG", "-", "127.0.0.1"], capture_output=True,
                         text=True, timeout=60).stdout  # fmt: skip
    nmap_open = sorted(int(p) for p in re.findall(r"(\d+)/open/tcp", out))
    assert nmap_open == got["open"] == sorted(open_ports), out


def test_table_lists_what_is_not_closed(tcp_ports: tuple[list[int], list[int]]) -> None:
    open_ports, closed = tcp_ports
    res = run_sockcat("scan", "localhost", _ports_arg(open_ports, closed))
    text = res.stdout.decode()
    assert res.returncode == 0, res.stderr
    for p in open_ports:
        assert re.search(rf"\b{p}\b.*tcp.*open", text), text
    for p in closed:
        assert str(p) not in text, text
    assert "6 ports scanned" in text and "3 open" in text and "3 closed" in text, text


def test_ipv6_and_a_well_known_service_name() -> None:
    try:
        srv = socket.create_server(("::1", 0), family=socket.AF_INET6)
    except OSError as exc:  # pragma: no cover - the CI machine has ::1
        pytest.fail(f"no IPv6 loopback: {exc}")
    with srv:
        port = srv.getsockname()[1]
        out = json.loads(run_sockcat("scan", "::1", str(port), "--json").stdout)
    assert out["address"] == "::1" and out["open"] == [port]
    # a port /etc/services names (root may bind it; 127.0.0.9 keeps clear of anything on 127.0.0.1)
    with socket.create_server(("127.0.0.9", 9)):
        (found,) = sockcat.scan("127.0.0.9", [9]).results
    assert (found.state, found.service) == ("open", socket.getservbyport(9, "tcp"))  # discard


def _namespace_run(args: list[str], drop_port: int) -> subprocess.CompletedProcess[str]:
    """Run ``python ARGS`` in a fresh network namespace whose firewall drops TCP to ``drop_port``."""
    for tool in ("ip", "nft"):
        require(tool)
    ns = f"sc-scan-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:

        def in_ns(*cmd: str) -> None:
            subprocess.run(["ip", "netns", "exec", ns, *cmd], check=True, timeout=30)

        in_ns("ip", "link", "set", "lo", "up")
        in_ns("nft", "add", "table", "inet", "sc")
        in_ns("nft", "add", "chain", "inet", "sc", "in", "{ type filter hook input priority 0; }")
        in_ns("nft", "add", "rule", "inet", "sc", "in", "tcp", "dport", str(drop_port), "drop")
        return subprocess.run(["ip", "netns", "exec", ns, sys.executable, *args],
                              capture_output=True, text=True, timeout=60)  # fmt: skip
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


def test_filtered_port_in_a_namespace_firewall() -> None:
    """A dropped SYN gets no answer: filtered, after the timeout; the port next to it is closed (RST)."""
    res = _namespace_run(["-m", "sockcat", "scan", "127.0.0.1", "7000,7001", "-w", "0.5", "--json"], drop_port=7000)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert [(r["port"], r["state"]) for r in out["results"]] == [(7000, "filtered")]
    assert out["counts"] == {"closed": 1, "filtered": 1}


def test_every_port_in_a_quiet_namespace() -> None:
    """All 65535 ports of a namespace where exactly one socket listens: exactly that one is open. The
    ephemeral range is scanned too, where a connect can meet itself (TCP simultaneous open) and must not
    count as open."""
    code = (
        "import socket, sockcat\n"
        "srv = socket.create_server(('127.0.0.1', 0))\n"
        "result = sockcat.scan('127.0.0.1', '-')\n"
        "print(srv.getsockname()[1], result.open, result.counts)\n"
    )
    res = _namespace_run(["-c", code], drop_port=1)
    assert res.returncode == 0, res.stderr
    port, rest = res.stdout.split(" ", 1)
    assert rest.strip() == f"[{port}] {{'open': 1, 'closed': 65533, 'filtered': 1}}", res.stdout


class _UdpResponder(threading.Thread):
    """Answers every datagram (even an empty one) with b"hi"."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.start()

    def run(self) -> None:
        while True:
            try:
                _data, peer = self.sock.recvfrom(65535)
                self.sock.sendto(b"hi", peer)
            except OSError:
                return


def test_udp_scan_states() -> None:
    responder = _UdpResponder()
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # bound, never answers
    silent.bind(("127.0.0.1", 0))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    try:
        ports = [responder.port, silent.getsockname()[1], closed]
        res = run_sockcat("scan", "127.0.0.1", _ports_arg(ports), "--udp", "-w", "0.6", "--json")
        assert res.returncode == 0, res.stderr
        out = json.loads(res.stdout)
        states = {r["port"]: r["state"] for r in out["results"]}
        assert states == {responder.port: "open", silent.getsockname()[1]: "open|filtered"}
        assert out["open"] == [responder.port]
        assert out["counts"] == {"open": 1, "closed": 1, "open|filtered": 1}
    finally:
        responder.sock.close()
        silent.close()


def test_bad_input_is_one_line() -> None:
    cases = [
        (["scan", "127.0.0.1", "abc"], 2, "bad ports"),
        (["scan", "127.0.0.1", "0"], 2, "ports are 1-65535"),
        (["scan", "127.0.0.1", "100-90"], 2, "goes backwards"),
        (["scan", "127.0.0.1", "65536"], 2, "ports are 1-65535"),
        (["scan", "no-such-host.invalid", "80"], 1, "cannot resolve host"),
        (["scan", "127.0.0.1", "80", "-w", "0"], 2, ""),
    ]
    for args, status, words in cases:
        res = run_sockcat(*args)
        lines = res.stderr.decode().splitlines()
        assert res.returncode == status, (args, lines)
        assert len(lines) >= 1 and words in lines[-1] and "Traceback" not in res.stderr.decode(), (args, lines)


def test_library_scan_sync_and_aio_leaves_no_descriptors(tcp_ports: tuple[list[int], list[int]]) -> None:
    open_ports, _closed = tcp_ports
    sockcat.scan("127.0.0.1", "1")  # the first uvloop in a process opens two descriptors it keeps for good
    before = len(os.listdir("/proc/self/fd"))
    result = sockcat.scan("127.0.0.1", "1-2000," + _ports_arg(open_ports), timeout=TIMEOUT)
    assert set(open_ports) <= set(result.open)
    assert len(result.results) == len({*range(1, 2001), *open_ports})
    # none left open (fewer is no leak: in a test worker another test's object may be collected meanwhile,
    # closing its socket: 19 against 20 once in a randomized run)
    assert len(os.listdir("/proc/self/fd")) <= before
    got = asyncio.run(aio.scan("127.0.0.1", open_ports))
    assert got.open == sorted(open_ports) and got.to_dict()["counts"] == {"open": 3}


def test_all_ports_dash() -> None:
    assert parse_ports("-") == list(range(1, 65536))
    assert parse_ports(" 80, 22,8000-8002,22 ") == [22, 80, 8000, 8001, 8002]


def test_a_range_may_leave_out_an_end() -> None:
    """As in nmap: -1024 is 1-1024, 65533- runs to 65535, and - in a list is every port."""
    assert parse_ports("-3,80") == [1, 2, 3, 80]
    assert parse_ports("65533-, 7") == [7, 65533, 65534, 65535]
    assert parse_ports("-,80") == list(range(1, 65536))
    for bad in ("0-", "-0", "-70000", "--", "1-2-3"):
        with pytest.raises(UsageError):
            parse_ports(bad)


def test_ports_starting_with_a_dash_are_ports_not_options() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        r = run_sockcat("scan", "127.0.0.1", f"-3,{port}", "--json", "-w", "1")
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert (got["open"], got["ports"]) == ([port], 4)


@given(st.sets(st.integers(1, 65535), min_size=1, max_size=40))
def test_parse_ports_round_trip(ports: set[int]) -> None:
    """Any set written as ranges of consecutive ports (the way people write them) parses back to itself."""
    ordered = sorted(ports)
    parts, start = [], ordered[0]
    for prev, cur in zip(ordered, [*ordered[1:], None], strict=True):
        if cur != prev + 1 if cur is not None else True:
            parts.append(str(start) if start == prev else f"{start}-{prev}")
            start = cur if cur is not None else start
    assert parse_ports(",".join(parts)) == ordered


def test_nmap_and_nft_are_installed() -> None:
    for tool in ("nmap", "nft"):
        assert shutil.which(tool), f"{tool} missing: run the README's test command"


def test_ports_take_service_names_and_only_ascii_digits() -> None:
    from sockcat.engines.scan import parse_ports

    assert parse_ports("ssh,http,8000-8002") == [22, 80, 8000, 8001, 8002]
    for bad, why in (("٨٠", "is not a port"), ("nosuch", "unknown service name"), ("80-٩٠", "is not a port")):
        r = run_sockcat("scan", "127.0.0.1", bad)
        assert r.returncode == 2, r
        assert why in r.stderr.decode() and r.stderr.count(b"\n") == 1, r.stderr


def test_an_empty_host_is_a_usage_error() -> None:
    r = run_sockcat("scan", "", "80")
    assert r.returncode == 2
    assert r.stderr == b"sockcat: error: scan needs a host (a name or an address), not an empty one\n"
