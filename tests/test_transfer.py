"""sockcat send / recv: real processes on loopback, hashes compared, interruptions made on purpose."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import stat
import subprocess
from pathlib import Path

import pytest
from conftest import TIMEOUT, Proc, require, run_sockcat, sockcat

from sockcat._transfer import MAGIC


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _tree(root: Path) -> dict[str, str]:
    """Relative path -> sha256 (files) or "dir" (directories), for everything under ``root``."""
    out = {}
    for p in sorted(root.rglob("*")):
        out[str(p.relative_to(root))] = "dir" if p.is_dir() else _sha(p)
    return out


@pytest.fixture
def source(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    (src / "D" / "sub").mkdir(parents=True)
    (src / "D" / "empty").mkdir()
    (src / "D" / "big.bin").write_bytes(os.urandom(24 << 20))
    (src / "D" / "sub" / "小王.txt").write_text("你好\n")
    (src / "D" / "sub" / "run.sh").write_text("#!/bin/sh\necho hi\n")
    (src / "D" / "sub" / "run.sh").chmod(0o750)
    (src / "top.txt").write_bytes(b"")  # an empty file travels too
    return src


def _recv(procs: list[Proc], out: Path, *args: str, address: str = "tcp://127.0.0.1:0") -> tuple[Proc, str]:
    p = Proc(sockcat("-v", "recv", address, "-o", str(out), *args))
    procs.append(p)
    return p, p.read_listening()


def _rest(p: Proc) -> list[str]:
    return p.stderr_lines + p.p.stderr.read().decode(errors="replace").splitlines()


def test_directory_and_files_arrive_hash_equal(procs: list[Proc], source: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    recv, addr = _recv(procs, out)
    res = run_sockcat("-v", "send", addr, str(source / "D"), str(source / "top.txt"), timeout=60)
    assert res.returncode == 0, res.stderr
    assert recv.wait(TIMEOUT) == 0
    want = {"top.txt": _sha(source / "top.txt")}
    want |= {f"D/{k}" if k else "D": v for k, v in _tree(source / "D").items()} | {"D": "dir"}
    assert _tree(out) == want  # the layout of `scp -r`, every byte equal, no part file left
    assert stat.S_IMODE((out / "D" / "sub" / "run.sh").stat().st_mode) == 0o750
    total = sum(p.stat().st_size for p in source.rglob("*") if p.is_file())
    assert f"sent 4 files: {total} of {total} bytes travelled" in res.stderr.decode()


def test_sending_again_moves_nothing(procs: list[Proc], source: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    for expect in ("of", "already there"):
        _recv_proc, addr = _recv(procs, out)
        res = run_sockcat("-v", "send", addr, str(source / "D"), timeout=60)
        assert res.returncode == 0, res.stderr
        assert expect in res.stderr.decode()
    assert "0 of 25165849 bytes travelled, 3 already there" in res.stderr.decode()


def _half_sender(addr: str, path: Path, name: str, stop_after: int) -> socket.socket:
    """A sender that speaks the protocol but stops after ``stop_after`` bytes of the file, and stays connected."""
    port = int(addr.rsplit(":", 1)[1])
    s = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    data = path.read_bytes()
    entry = {"path": name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "mode": 0o644}
    s.sendall(MAGIC + b"\n" + json.dumps({"files": [entry], "dirs": []}).encode() + b"\n")
    f = s.makefile("rb")
    assert json.loads(f.readline()) == {"have": [0]}
    s.sendall(data[:stop_after])
    return s


def test_an_interrupted_send_resumes_with_only_the_missing_bytes(
    procs: list[Proc], source: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    big = source / "D" / "big.bin"
    recv, addr = _recv(procs, out)
    half = _half_sender(addr, big, "big.bin", 10 << 20)
    half.close()  # the sender dies mid-file
    assert recv.wait(TIMEOUT) == 1
    assert any("closed the connection inside big.bin" in line for line in _rest(recv))
    parts = list(out.glob(".big.bin.*.part"))
    assert len(parts) == 1 and parts[0].stat().st_size == 10 << 20 and not (out / "big.bin").exists()
    recv, addr = _recv(procs, out)
    res = run_sockcat("-v", "send", addr, str(big), timeout=60)
    assert res.returncode == 0, res.stderr
    err = res.stderr.decode()
    assert f"big.bin: resuming at byte {10 << 20} of {24 << 20}" in err
    assert f"{14 << 20} of {24 << 20} bytes travelled" in err
    assert recv.wait(TIMEOUT) == 0
    assert _sha(out / "big.bin") == _sha(big) and not list(out.glob(".*.part"))


def test_a_killed_receiver_resumes_too(procs: list[Proc], source: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    big = source / "D" / "big.bin"
    recv, addr = _recv(procs, out)
    half = _half_sender(addr, big, "big.bin", 6 << 20)
    part = None
    for _ in range(200):  # wait until the receiver has written what arrived
        found = list(out.glob(".big.bin.*.part"))
        if found and found[0].stat().st_size == 6 << 20:
            part = found[0]
            break
        half.settimeout(0.02)
        try:
            half.recv(1)
        except TimeoutError:
            pass
    assert part is not None
    recv.p.send_signal(signal.SIGKILL)
    recv.wait(TIMEOUT)
    half.close()
    recv, addr = _recv(procs, out)
    res = run_sockcat("-v", "send", addr, str(big), timeout=60)
    assert res.returncode == 0, res.stderr
    assert f"resuming at byte {6 << 20}" in res.stderr.decode()
    assert _sha(out / "big.bin") == _sha(big)


def test_a_corrupted_part_is_caught_and_never_kept(procs: list[Proc], source: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    big = source / "D" / "big.bin"
    recv, addr = _recv(procs, out)
    _half_sender(addr, big, "big.bin", 1 << 20).close()
    recv.wait(TIMEOUT)
    (part,) = out.glob(".big.bin.*.part")
    data = bytearray(part.read_bytes())
    data[1000] ^= 0xFF  # the disk (or someone) changed a byte of the part
    part.write_bytes(bytes(data))
    recv, addr = _recv(procs, out)
    res = run_sockcat("send", addr, str(big), timeout=60)
    lines = res.stderr.decode().splitlines()
    assert res.returncode == 1 and len(lines) == 1, lines
    assert "SHA-256 does not match" in lines[0], lines
    assert recv.wait(TIMEOUT) == 1
    assert not (out / "big.bin").exists() and not list(out.glob(".*.part"))
    recv, addr = _recv(procs, out)  # the next try starts clean and succeeds
    assert run_sockcat("send", addr, str(big), timeout=60).returncode == 0
    assert _sha(out / "big.bin") == _sha(big)


def test_a_changed_source_starts_over(procs: list[Proc], tmp_path: Path) -> None:
    out, f = tmp_path / "out", tmp_path / "f.bin"
    f.write_bytes(os.urandom(1 << 20))
    recv, addr = _recv(procs, out)
    _half_sender(addr, f, "f.bin", 1000).close()
    recv.wait(TIMEOUT)
    f.write_bytes(os.urandom(1 << 20))  # another version: the old part must not be resumed
    recv, addr = _recv(procs, out)
    res = run_sockcat("-v", "send", addr, str(f), timeout=60)
    assert res.returncode == 0 and "resuming" not in res.stderr.decode(), res.stderr
    assert _sha(out / "f.bin") == _sha(f) and not list(out.glob(".*.part"))


@pytest.mark.parametrize("bad", ["../evil.txt", "/etc/evil", "a/../../evil", "", "a//b"])
def test_unsafe_paths_are_refused(procs: list[Proc], tmp_path: Path, bad: str) -> None:
    out = tmp_path / "deep" / "out"
    recv, addr = _recv(procs, out)
    port = int(addr.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as s:
        entry = {"path": bad, "size": 1, "sha256": "0" * 64, "mode": 0o644}
        s.sendall(MAGIC + b"\n" + json.dumps({"files": [entry]}).encode() + b"\n")
        reply = json.loads(s.makefile("rb").readline())
    assert "refused unsafe path" in reply["error"]
    assert recv.wait(TIMEOUT) == 1
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "deep" / "evil.txt").exists()


def test_not_a_sender_and_nobody_listening(procs: list[Proc], tmp_path: Path) -> None:
    out = tmp_path / "out"
    recv, addr = _recv(procs, out)
    port = addr.rsplit(":", 1)[1]
    subprocess.run([require("nc"), "-N", "127.0.0.1", port], input=b"GET / HTTP/1.0\r\n\r\n", timeout=TIMEOUT)
    assert recv.wait(TIMEOUT) == 1
    lines = [line for line in _rest(recv) if line.startswith("sockcat: error")]
    assert lines == ["sockcat: error: the peer is not a sockcat send (no SOCKCAT-TRANSFER 1 line)"], _rest(recv)
    res = run_sockcat("send", addr, str(tmp_path))  # the receiver is gone
    assert res.returncode == 1 and res.stderr.decode().count("\n") == 1 and "refused" in res.stderr.decode()
    res = run_sockcat("send", addr, str(tmp_path / "missing"))
    assert res.returncode == 2 and "no such file or directory" in res.stderr.decode()


def test_keep_open_takes_several_sessions_over_tls_and_unix(
    procs: list[Proc], source: Path, tmp_path: Path, short_tmp: Path
) -> None:
    out = tmp_path / "out"
    recv, addr = _recv(procs, out, "-k", address="tls://127.0.0.1:0")
    for name in ("top.txt", "D"):
        res = run_sockcat("send", "--insecure", addr, str(source / name), timeout=60)
        assert res.returncode == 0, res.stderr
    assert _sha(out / "D" / "big.bin") == _sha(source / "D" / "big.bin") and (out / "top.txt").exists()
    assert recv.p.poll() is None  # -k: still there
    recv, addr = _recv(procs, tmp_path / "out2", address=f"unix:{short_tmp / 't.sock'}")
    assert run_sockcat("send", addr, str(source / "D" / "sub"), timeout=60).returncode == 0
    assert recv.wait(TIMEOUT) == 0
    assert (tmp_path / "out2" / "sub" / "小王.txt").read_text() == "你好\n"


def test_library_send_and_recv(source: Path, tmp_path: Path) -> None:
    import threading

    import sockcat

    with sockcat.listen("tcp://127.0.0.1:0") as server:
        got: list[object] = []

        def serve() -> None:
            with server.accept() as conn:
                got.append(sockcat.recv_files(conn, tmp_path / "lib"))

        t = threading.Thread(target=serve)
        t.start()
        with sockcat.connect(server.address, timeout=TIMEOUT) as c:
            report = sockcat.send_files(c, [source / "D"])
        t.join(TIMEOUT)
    assert report.files == 3 and report.bytes_sent == report.bytes_total
    assert _sha(tmp_path / "lib" / "D" / "big.bin") == _sha(source / "D" / "big.bin")
