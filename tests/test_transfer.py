"""sockcat send / recv as users run them: real processes on loopback, hashes compared, interruptions on purpose.

The hostile cases (a sender or a receiver that lies) are in test_transfer_hostile.py.
"""

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
from conftest import TIMEOUT, Proc, port_of, require, run_sockcat, sockcat
from transfer_raw import RawSender, entry, line


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
    (src / "D" / "sub" / "report**[1].txt").write_text("globs are just characters\n")
    (src / "top.txt").write_bytes(b"")  # an empty file travels too
    return src


class Recv:
    """A running ``sockcat recv``: its process, bound address and code (None with --no-code)."""

    def __init__(self, procs: list[Proc], out: Path, *args: str, address: str = "tcp://127.0.0.1:0") -> None:
        self.proc = Proc(sockcat("-v", "recv", address, "-o", str(out), *args))
        procs.append(self.proc)
        self.address = self.proc.read_listening()
        codes = [line[len("code: ") :] for line in self.proc.stderr_lines if line.startswith("code: ")]
        self.code = codes[0] if codes else None

    @property
    def port(self) -> int:
        return port_of(self.address)

    def send(self, *args: str, code: str | None = "auto", timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
        given = self.code if code == "auto" else code
        return run_sockcat("-v", "send", *(["--code", given] if given else []), self.address, *args, timeout=timeout)

    def wait(self) -> int:
        return self.proc.wait(TIMEOUT)

    def rest(self) -> list[str]:
        return self.proc.stderr_lines + self.proc.p.stderr.read().decode(errors="replace").splitlines()


def test_directory_and_files_arrive_hash_equal_with_the_code(procs: list[Proc], source: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    recv = Recv(procs, out)
    assert recv.code is not None and len(recv.code.split("-")) == 3  # NUMBER-WORD-WORD, read aloud
    res = recv.send(str(source / "D"), str(source / "top.txt"))
    assert res.returncode == 0, res.stderr
    assert recv.wait() == 0
    want = {"top.txt": _sha(source / "top.txt")}
    want |= {f"D/{k}" if k else "D": v for k, v in _tree(source / "D").items()} | {"D": "dir"}
    assert _tree(out) == want  # the layout of `scp -r`, every byte equal, no part file left
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((out / "D" / "sub" / "run.sh").stat().st_mode) == 0o750 & ~umask
    total = sum(p.stat().st_size for p in source.rglob("*") if p.is_file())
    assert f"sent 5 files: {total} of {total} bytes travelled" in res.stderr.decode()


def test_json_summaries_on_both_sides(procs: list[Proc], source: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    recv = Recv(procs, out, "--json")
    res = run_sockcat("send", "--json", "--code", recv.code or "", recv.address, str(source / "D"), timeout=60)
    assert res.returncode == 0, res.stderr
    sent = json.loads(res.stdout)
    total = sum(p.stat().st_size for p in (source / "D").rglob("*") if p.is_file())
    assert sent["ok"] is True and sent["files"] == 4 and sent["bytes"] == total and sent["skipped"] == 0
    assert isinstance(sent["seconds"], float) and sent["seconds"] > 0
    assert recv.wait() == 0
    got = json.loads(recv.proc.p.stdout.read())
    assert {k: got[k] for k in ("ok", "files", "bytes", "skipped")} == {
        "ok": True,
        "files": 4,
        "bytes": total,
        "skipped": 0,
    }
    recv = Recv(procs, out, "--json")  # again: everything is there already
    res = run_sockcat("send", "--json", "--code", recv.code or "", recv.address, str(source / "D"), timeout=60)
    again = json.loads(res.stdout)
    assert again["bytes"] == 0 and again["skipped"] == total and again["ok"] is True


def test_sending_again_moves_nothing(procs: list[Proc], source: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    for expect in ("of", "already there"):
        recv = Recv(procs, out)
        res = recv.send(str(source / "D"))
        assert res.returncode == 0, res.stderr
        assert expect in res.stderr.decode()
        assert recv.wait() == 0
    total = sum(p.stat().st_size for p in (source / "D").rglob("*") if p.is_file())
    assert f"0 of {total} bytes travelled, 4 already there" in res.stderr.decode()


def test_no_code_mode_warns_and_works(procs: list[Proc], source: Path, tmp_path: Path) -> None:
    recv = Recv(procs, tmp_path / "out", "--no-code")
    assert recv.code is None
    assert any(
        line.startswith("sockcat: warning: recv --no-code: anyone who can connect") for line in recv.proc.stderr_lines
    )
    res = recv.send(str(source / "top.txt"), code=None)
    assert res.returncode == 0, res.stderr
    assert recv.wait() == 0 and (tmp_path / "out" / "top.txt").exists()


def test_a_given_code_from_the_environment(procs: list[Proc], source: Path, tmp_path: Path) -> None:
    env = dict(os.environ, SOCKCAT_CODE="4-Correct Horse")
    p = Proc(sockcat("recv", "tcp://127.0.0.1:0", "-o", str(tmp_path / "out")), env=env)
    procs.append(p)
    addr = p.read_listening()
    assert "code: 4-correct-horse" in p.stderr_lines  # case, spaces and dashes do not matter
    res = subprocess.run(sockcat("send", addr, str(source / "top.txt")), env=env, capture_output=True, timeout=TIMEOUT)
    assert res.returncode == 0, res.stderr
    assert p.wait(TIMEOUT) == 0


def test_a_wrong_or_missing_code_fails_both_sides_and_writes_nothing(
    procs: list[Proc], source: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    for given, words in (("1-apple-banjo", "wrong code"), (None, "needs its code")):
        recv = Recv(procs, out)
        res = recv.send(str(source / "D"), code=given)
        lines = res.stderr.decode().splitlines()
        assert res.returncode == 1 and len(lines) == 1 and words in lines[0], lines
        assert recv.wait() == 1
        errors = [line for line in recv.rest() if line.startswith("sockcat: error")]
        assert len(errors) == 1 and ("wrong code" in errors[0] or "gave no code" in errors[0]), errors
        assert list(out.iterdir()) == []  # nothing written, not even a directory


def test_a_code_is_not_sent_to_a_receiver_without_one(procs: list[Proc], source: Path, tmp_path: Path) -> None:
    recv = Recv(procs, tmp_path / "out", "--no-code")
    res = recv.send(str(source / "top.txt"), code="7-some-code")
    assert res.returncode == 1 and b"runs without a code" in res.stderr
    assert recv.wait() == 1 and not (tmp_path / "out" / "top.txt").exists()


def test_an_old_sender_gets_one_clear_error(procs: list[Proc], tmp_path: Path) -> None:
    recv = Recv(procs, tmp_path / "out", "--no-code")
    with socket.create_connection(("127.0.0.1", recv.port), timeout=TIMEOUT) as s:
        s.sendall(b"SOCKCAT-TRANSFER 1\n" + line({"files": [], "dirs": []}))
        reply = json.loads(s.makefile("rb").readline())
    assert "version 2" in reply["error"]
    assert recv.wait() == 1
    assert any("speaks transfer version 1, not 2" in line for line in recv.rest())


def _half_sender(port: int, data: bytes, name: str, stop_after: int, code: str | None) -> RawSender:
    """A sender that speaks the protocol but stops after ``stop_after`` bytes of the file, and stays connected."""
    s = RawSender(port)
    assert "error" not in s.hello(code)
    s.manifest([entry(name, data)])
    offers, go = s.plan_all()
    assert go == {"go": True}, (offers, go)
    s.send(data[:stop_after])
    return s


def _wait_part(path: Path, size: int, s: RawSender) -> None:
    for _ in range(500):  # until the receiver has written what arrived (it answers nothing meanwhile)
        if path.exists() and path.stat().st_size == size:
            return
        s.sock.settimeout(0.02)
        try:
            s.sock.recv(1, socket.MSG_PEEK)
        except TimeoutError:
            pass
    raise AssertionError(f"{path} never reached {size} bytes")


@pytest.mark.parametrize("mode", ["code", "no-code"])
def test_an_interrupted_send_resumes_with_only_the_missing_bytes(
    procs: list[Proc], source: Path, tmp_path: Path, mode: str
) -> None:
    out = tmp_path / "out"
    big = source / "D" / "big.bin"
    args = ("--no-code",) if mode == "no-code" else ()
    recv = Recv(procs, out, *args)
    part = out / ".big.bin.sockcat-part"
    half = _half_sender(recv.port, big.read_bytes(), "big.bin", 10 << 20, recv.code)
    _wait_part(part, 10 << 20, half)
    half.close()  # the sender dies mid-file
    assert recv.wait() == 1
    assert any("closed the connection in the big.bin" in line for line in recv.rest()), recv.rest()
    assert part.stat().st_size == 10 << 20 and not (out / "big.bin").exists()
    assert stat.S_IMODE(part.stat().st_mode) == 0o600  # nobody else reads a file that is still arriving
    recv = Recv(procs, out, *args)
    res = recv.send(str(big), code=recv.code)
    assert res.returncode == 0, res.stderr
    err = res.stderr.decode()
    assert f"big.bin: resuming at byte {10 << 20} of {24 << 20}" in err
    assert f"{14 << 20} of {24 << 20} bytes travelled" in err
    assert recv.wait() == 0
    assert _sha(out / "big.bin") == _sha(big) and not list(out.glob(".*"))


def test_a_killed_receiver_resumes_too(procs: list[Proc], source: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    big = source / "D" / "big.bin"
    recv = Recv(procs, out)
    half = _half_sender(recv.port, big.read_bytes(), "big.bin", 6 << 20, recv.code)
    _wait_part(out / ".big.bin.sockcat-part", 6 << 20, half)
    recv.proc.p.send_signal(signal.SIGKILL)
    recv.proc.wait(TIMEOUT)
    half.close()
    recv = Recv(procs, out)
    res = recv.send(str(big))
    assert res.returncode == 0, res.stderr
    assert f"resuming at byte {6 << 20}" in res.stderr.decode()
    assert _sha(out / "big.bin") == _sha(big)


def test_a_corrupted_part_is_never_resumed_from(procs: list[Proc], source: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    big = source / "D" / "big.bin"
    recv = Recv(procs, out)
    half = _half_sender(recv.port, big.read_bytes(), "big.bin", 1 << 20, recv.code)
    part = out / ".big.bin.sockcat-part"
    _wait_part(part, 1 << 20, half)
    half.close()
    recv.wait()
    data = bytearray(part.read_bytes())
    data[1000] ^= 0xFF  # the disk (or someone) changed a byte of the part
    part.write_bytes(bytes(data))
    recv = Recv(procs, out)
    res = recv.send(str(big))
    assert res.returncode == 0 and b"resuming" not in res.stderr, res.stderr  # the prefixes differ: start over
    assert recv.wait() == 0
    assert _sha(out / "big.bin") == _sha(big) and not part.exists()


def test_bytes_that_do_not_match_their_sha256_are_never_kept(procs: list[Proc], tmp_path: Path) -> None:
    recv = Recv(procs, tmp_path / "out", "--no-code")
    s = RawSender(recv.port)
    s.hello()
    data = os.urandom(100_000)
    s.manifest([entry("f.bin", data)])
    s.plan_all()
    s.file(data, digest=hashlib.sha256(b"something else").digest())
    result = s.msg()
    assert result["ok"] is False and "f.bin: SHA-256 does not match; the file was not kept" in result["error"]
    assert recv.wait() == 1
    assert list((tmp_path / "out").iterdir()) == []


def test_a_changed_source_starts_over(procs: list[Proc], tmp_path: Path) -> None:
    out, f = tmp_path / "out", tmp_path / "f.bin"
    f.write_bytes(os.urandom(6 << 20))
    recv = Recv(procs, out)
    half = _half_sender(recv.port, f.read_bytes(), "f.bin", 5 << 20, recv.code)
    _wait_part(out / ".f.bin.sockcat-part", 5 << 20, half)
    half.close()
    recv.wait()
    f.write_bytes(os.urandom(6 << 20))  # another version: the old part must not be resumed
    recv = Recv(procs, out)
    res = recv.send(str(f))
    assert res.returncode == 0 and b"resuming" not in res.stderr, res.stderr
    assert _sha(out / "f.bin") == _sha(f) and not list(out.glob(".*"))


def test_an_existing_different_file_is_refused_unless_overwrite(procs: list[Proc], tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("the receiver's own notes\n")
    (tmp_path / "notes.txt").write_text("the sender's notes, longer than the receiver's\n")
    recv = Recv(procs, out)
    res = recv.send(str(tmp_path / "notes.txt"))
    lines = res.stderr.decode().splitlines()
    assert res.returncode == 1 and len(lines) == 1, lines
    assert "notes.txt: exists with different content; not replaced (recv --overwrite)" in lines[0]
    assert recv.wait() == 1 and (out / "notes.txt").read_text() == "the receiver's own notes\n"
    recv = Recv(procs, out, "--overwrite")
    assert recv.send(str(tmp_path / "notes.txt")).returncode == 0
    assert recv.wait() == 0 and (out / "notes.txt").read_text().startswith("the sender's")
    # same size, other bytes: told apart by SHA-256, not by size
    (tmp_path / "notes.txt").write_text("the sender's notes, longer than the receiver's\n".upper())
    recv = Recv(procs, out)
    assert recv.send(str(tmp_path / "notes.txt")).returncode == 1 and recv.wait() == 1


def test_a_directory_and_a_file_never_replace_each_other(procs: list[Proc], tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / "x").mkdir(parents=True)
    (out / "y").write_text("a file")
    src = tmp_path / "src"
    (src / "y").mkdir(parents=True)
    (src / "y" / "inner.txt").write_text("hi")
    (tmp_path / "x").write_text("a file where a directory is")
    for path, want in (
        (tmp_path / "x", "x: exists and is not a regular file"),
        (src / "y", "y: exists and is not a directory"),
    ):
        recv = Recv(procs, out, "--overwrite")
        res = recv.send(str(path))
        assert res.returncode == 1 and want in res.stderr.decode(), res.stderr
        assert recv.wait() == 1
    assert (out / "x").is_dir() and (out / "y").read_text() == "a file"


def test_max_size_caps_a_session(procs: list[Proc], source: Path, tmp_path: Path) -> None:
    recv = Recv(procs, tmp_path / "out", "--max-size", "1M")
    res = recv.send(str(source / "D"))
    assert res.returncode == 1 and b"recv --max-size is 1,048,576" in res.stderr, res.stderr
    assert recv.wait() == 1 and not (tmp_path / "out" / "D").exists()


def test_keep_open_serves_sessions_over_tls_and_unix(
    procs: list[Proc], source: Path, tmp_path: Path, short_tmp: Path
) -> None:
    out = tmp_path / "out"
    recv = Recv(procs, out, "-k", address="tls://127.0.0.1:0")
    for name in ("top.txt", "D"):
        res = run_sockcat("send", "--insecure", "--code", recv.code or "", recv.address, str(source / name), timeout=60)
        assert res.returncode == 0, res.stderr
    assert _sha(out / "D" / "big.bin") == _sha(source / "D" / "big.bin") and (out / "top.txt").exists()
    assert recv.proc.p.poll() is None  # -k: still there
    recv = Recv(procs, tmp_path / "out2", "--no-code", address=f"unix:{short_tmp / 't.sock'}")
    assert recv.send(str(source / "D" / "sub"), code=None).returncode == 0
    assert recv.wait() == 0
    assert (tmp_path / "out2" / "sub" / "小王.txt").read_text() == "你好\n"


def test_client_certificates_with_ca(procs: list[Proc], source: Path, tmp_path: Path) -> None:
    import trustme

    ca = trustme.CA()
    ca_pem, server_pem, client_pem = tmp_path / "ca.pem", tmp_path / "server.pem", tmp_path / "client.pem"
    ca.cert_pem.write_to_path(str(ca_pem))
    server = ca.issue_cert("127.0.0.1")
    server.private_key_and_cert_chain_pem.write_to_path(str(server_pem))
    ca.issue_cert("client@example").private_key_and_cert_chain_pem.write_to_path(str(client_pem))
    args = ("-k", "--cert", str(server_pem), "--ca", str(ca_pem))
    recv = Recv(procs, tmp_path / "out", *args, address="tls://127.0.0.1:0")
    base = ("--code", recv.code or "", "--ca", str(ca_pem))
    res = run_sockcat("send", *base, recv.address, str(source / "top.txt"))
    assert res.returncode == 1  # no client certificate: the handshake fails
    res = run_sockcat("send", *base, "--cert", str(client_pem), recv.address, str(source / "top.txt"))
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "out" / "top.txt").exists()


def test_not_a_sender_and_nobody_listening(procs: list[Proc], tmp_path: Path) -> None:
    recv = Recv(procs, tmp_path / "out")
    subprocess.run([require("nc"), "-N", "127.0.0.1", str(recv.port)], input=b"GET / HTTP/1.0\r\n\r\n", timeout=TIMEOUT)
    assert recv.wait() == 1
    lines = [line for line in recv.rest() if line.startswith("sockcat: error")]
    assert len(lines) == 1 and lines[0].endswith("is not a sockcat send (no SOCKCAT-TRANSFER line)"), recv.rest()
    res = run_sockcat("send", "--code", "1-a-b", recv.address, str(tmp_path))  # the receiver is gone
    assert res.returncode == 1 and res.stderr.decode().count("\n") == 1 and b"refused" in res.stderr
    res = run_sockcat("send", recv.address, str(tmp_path / "missing"))
    assert res.returncode == 2 and b"no such file or directory" in res.stderr


def test_library_send_and_recv(source: Path, tmp_path: Path) -> None:
    import threading

    import sockcat

    with sockcat.listen("tcp://127.0.0.1:0") as server:
        got: list[object] = []

        def serve() -> None:
            with server.accept() as conn:
                got.append(sockcat.recv_files(conn, tmp_path / "lib", code="9-secret-word"))

        t = threading.Thread(target=serve)
        t.start()
        with sockcat.connect(server.address, timeout=TIMEOUT) as c:
            report = sockcat.send_files(c, [source / "D"], code="9-secret-word")
        t.join(TIMEOUT)
    assert report.ok and report.bytes == report.total and report.files == 4
    assert got and got[0].ok  # type: ignore[attr-defined]
    assert _sha(tmp_path / "lib" / "D" / "big.bin") == _sha(source / "D" / "big.bin")


def test_allow_deny_and_max_conns(procs: list[Proc], source: Path, tmp_path: Path) -> None:
    recv = Recv(procs, tmp_path / "out", "-k", "--deny", "127.0.0.0/8", "--no-code")
    res = recv.send(str(source / "top.txt"), code=None)
    assert res.returncode == 1 and not (tmp_path / "out" / "top.txt").exists()
    recv = Recv(procs, tmp_path / "out2", "-k", "--allow", "::ffff:127.0.0.1/128", "--no-code")
    assert recv.send(str(source / "top.txt"), code=None).returncode == 0  # a mapped rule matches 127.0.0.1
    recv = Recv(procs, tmp_path / "out3", "-k", "--max-conns", "1", "--no-code")
    with socket.create_connection(("127.0.0.1", recv.port), timeout=TIMEOUT) as first:
        first.sendall(b"SOCKCAT-TRANSFER 2\n")  # an unfinished session holds the only place
        res = recv.send(str(source / "top.txt"), code=None)
        assert res.returncode == 1 and not (tmp_path / "out3" / "top.txt").exists()
    for _ in range(200):  # once the first connection is gone, the place is free again
        res = recv.send(str(source / "top.txt"), code=None)
        if res.returncode == 0:
            break
    assert (tmp_path / "out3" / "top.txt").exists()
    with pytest.raises(AssertionError):  # no address to match on a unix listener: a usage error
        Recv(procs, tmp_path / "out4", "--allow", "10.0.0.0/8", address="unix:@sc-xfer-allow")
