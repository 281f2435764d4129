"""What a person installing sockcat gets: the wheel and sdist built and installed in a fresh venv and run there,
the version, the manual page (current with the parser, rendered by ``man`` without a warning), shell completion."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
from conftest import TIMEOUT, Proc, require, run_sockcat

import sockcat

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.timeout(600)


def test_version() -> None:
    r = run_sockcat("--version")
    assert r.returncode == 0 and r.stdout.decode() == f"sockcat {sockcat.__version__}\n"


def test_the_manual_page_is_current_and_renders_cleanly(tmp_path: Path) -> None:
    fresh = tmp_path / "sockcat.1"
    subprocess.run(
        ["bash", str(ROOT / "scripts/manpage"), str(fresh)],
        check=True,
        env={**os.environ, "PYTHON": sys.executable},
        timeout=TIMEOUT,
    )
    committed = (ROOT / "docs/sockcat.1").read_text().splitlines()
    made = fresh.read_text().splitlines()
    assert committed[1:] == made[1:], "docs/sockcat.1 is out of date: run scripts/manpage"  # (line 1 has the date)
    assert "\\-\\-trace\\-json" in fresh.read_text() and "sockcat chat" in fresh.read_text()
    r = subprocess.run(
        [require("man"), "--warnings", "-l", str(fresh)],
        capture_output=True,
        env={**os.environ, "MANWIDTH": "80", "MANPAGER": "cat", "PAGER": "cat"},
        timeout=TIMEOUT,
    )
    assert r.returncode == 0 and r.stderr == b"", r.stderr
    assert b"sockets of every kind" in r.stdout and b"NAME" in r.stdout


@pytest.mark.parametrize(
    ("line", "word", "expected"),
    [("sockcat con", 1, "connect"), ("sockcat bench --mo", 2, "--mode"), ("sockcat chat --clu", 2, "--cluster")],
)
def test_bash_completion(tmp_path: Path, line: str, word: int, expected: str) -> None:
    script = tmp_path / "sockcat.bash"
    r = run_sockcat("--completion", "bash")
    assert r.returncode == 0
    script.write_bytes(r.stdout)
    words = line.split()
    probe = (
        f"source {script}; COMP_WORDS=({' '.join(words)}); COMP_CWORD={word}; COMP_LINE='{line}'; "
        'COMP_POINT=${#COMP_LINE}; _shtab_sockcat; printf "%s\\n" "${COMPREPLY[@]}"'
    )
    out = subprocess.run([require("bash"), "-c", probe], capture_output=True, timeout=TIMEOUT)
    assert expected in out.stdout.decode().split(), (out.stdout, out.stderr)
    zsh = run_sockcat("--completion", "zsh")
    assert zsh.returncode == 0 and b"#compdef sockcat" in zsh.stdout
    assert run_sockcat("--completion", "fish").returncode == 2


def test_wheel_and_sdist_install_into_a_fresh_venv_and_run(tmp_path: Path, procs: list[Proc]) -> None:
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(dist), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = dist.glob("sockcat-*.whl")
    (sdist,) = dist.glob("sockcat-*.tar.gz")
    names = zipfile.ZipFile(wheel).namelist()
    assert any(n.endswith(".data/data/share/man/man1/sockcat.1") for n in names), names
    assert any(n.endswith("engines/chat/page/index.html") for n in names)
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), names
    with tarfile.open(sdist) as tar:
        members = tar.getnames()
    for wanted in ("docs/sockcat.1", "LICENSE", "tests/conftest.py", "CHANGELOG.md"):
        assert any(m.endswith(wanted) for m in members), (wanted, members)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    subprocess.run([str(venv / "bin/pip"), "install", "-q", str(wheel)], check=True, capture_output=True, timeout=300)
    exe = str(venv / "bin/sockcat")
    version = subprocess.run([exe, "--version"], capture_output=True, timeout=TIMEOUT)
    assert version.stdout.decode() == f"sockcat {sockcat.__version__}\n"
    assert (venv / "share/man/man1/sockcat.1").is_file()
    server = Proc([exe, "serve", "echo", "tcp://127.0.0.1:0"])
    procs.append(server)
    port = int(server.read_listening().rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as s:
        s.sendall("你好, sockcat\n".encode())
        s.shutdown(socket.SHUT_WR)
        got = b""
        while chunk := s.recv(4096):
            got += chunk
    assert got == "你好, sockcat\n".encode()
