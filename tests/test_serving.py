"""The serving scaffold, as every listening command shows it: signals, socket files, the workers' bound."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from conftest import Proc, run_sockcat, sockcat

SERVERS = {
    "serve": lambda a: ["serve", "echo", a],
    "relay": lambda a: ["relay", a, "tcp://127.0.0.1:9"],
    "chat": lambda a: ["chat", a, "--db", ":memory:"],
    "recv": lambda a: ["recv", "-k", "--no-code", a, "-o", "/tmp"],
    "listen": lambda a: ["listen", "-k", a],
}


@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGTERM, signal.SIGINT], ids=["HUP", "TERM", "INT"])
@pytest.mark.parametrize("command", list(SERVERS))
def test_a_stop_signal_ends_every_server_and_removes_its_socket_file(
    procs: list[Proc], short_tmp: Path, command: str, sig: signal.Signals
) -> None:
    path = short_tmp / f"{command}.sock"
    p = Proc(sockcat(*SERVERS[command](f"unix:{path}")))
    procs.append(p)
    assert p.read_listening() == f"unix:{path}" and path.exists()
    p.p.send_signal(sig)
    assert p.wait() == (130 if sig == signal.SIGINT else 0)  # closing the terminal (HUP) is a clean stop too
    assert not path.exists()


@pytest.mark.parametrize("command", ["serve", "relay"])
def test_workers_are_bounded(command: str) -> None:
    args = SERVERS[command]("tcp://127.0.0.1:0")
    res = run_sockcat(*args, "--workers", "100000")
    assert res.returncode == 2 and b"--workers must be from 1 to" in res.stderr
    assert res.stderr.count(b"\n") == 1
