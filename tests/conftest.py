"""Shared fixtures: real processes on real loopback sockets, nothing mocked.

A test that needs a peer program (socat, ncat, nc, openssl…) fails loudly when it is missing:
`.ci/run` installs them, so a missing one is a broken set-up, never a reason to skip.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

SOCKCAT = [sys.executable, "-m", "sockcat"]
TIMEOUT = 20.0


def require(tool: str) -> str:
    """Path of a peer program; a missing one fails the test (it is a set-up bug, not a skip)."""
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"{tool} is not installed: run the README's test command (it installs the peers)")
    return path


def free_port(kind: int = socket.SOCK_STREAM, host: str = "127.0.0.1") -> int:
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(fam, kind) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_port(port: int, host: str = "127.0.0.1", timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(0.05)
    raise AssertionError(f"nothing listens on {host}:{port} after {timeout} s")


class Proc:
    """A child process with its stderr captured line by line (the ``listening on`` line included)."""

    def __init__(
        self,
        args: list[str],
        *,
        stdin: int | None = subprocess.DEVNULL,
        stdout: int | None = subprocess.PIPE,
        env: dict[str, str] | None = None,
        cwd: str | Path | None = None,
    ) -> None:
        self.args = args
        self.p = subprocess.Popen(args, stdin=stdin, stdout=stdout, stderr=subprocess.PIPE, env=env, cwd=cwd)
        self.stderr_lines: list[str] = []

    def read_listening(self, timeout: float = TIMEOUT) -> str:
        """Read stderr until ``listening on ADDRESS``; return ADDRESS."""
        assert self.p.stderr is not None
        deadline = time.monotonic() + timeout
        import selectors

        with selectors.DefaultSelector() as sel:
            sel.register(self.p.stderr, selectors.EVENT_READ)
            while time.monotonic() < deadline:
                if not sel.select(max(0.0, deadline - time.monotonic())):
                    break
                line = self.p.stderr.readline().decode(errors="replace")
                if not line:
                    break
                self.stderr_lines.append(line.rstrip("\n"))
                if line.startswith("listening on "):
                    return line[len("listening on ") :].strip()
        self.kill()
        raise AssertionError(f"no 'listening on' line from {self.args}: {self.stderr_lines}")

    def wait(self, timeout: float = TIMEOUT) -> int:
        try:
            return self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def communicate(self, data: bytes | None = None, timeout: float = TIMEOUT) -> tuple[bytes, str]:
        out, err = self.p.communicate(data, timeout=timeout)
        lines = self.stderr_lines + (err or b"").decode(errors="replace").splitlines()
        return out or b"", "\n".join(lines)

    def terminate(self) -> int:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
        return self.wait()

    def kill(self) -> None:
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait(5)


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    """Start processes through ``procs.append(Proc(...))``; each is ended (by its PID) after the test."""
    started: list[Proc] = []
    yield started
    for proc in started:
        proc.kill()
        for stream in (proc.p.stdout, proc.p.stderr, proc.p.stdin):
            if stream is not None:
                stream.close()


def sockcat(*args: str) -> list[str]:
    return [*SOCKCAT, *args]


def run_sockcat(*args: str, input: bytes | None = None, timeout: float = TIMEOUT) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        sockcat(*args),
        input=input,
        capture_output=True,
        timeout=timeout,
        stdin=None if input is not None else subprocess.DEVNULL,
    )


@pytest.fixture
def short_tmp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A short directory for Unix socket paths (sun_path holds 107 bytes)."""
    d = Path(f"/tmp/sc-{os.getpid()}-{time.monotonic_ns() % 10**9}")
    d.mkdir()
    yield d
    shutil.rmtree(d, ignore_errors=True)
