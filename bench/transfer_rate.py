"""One file over loopback, every copy hash-checked: ``sockcat send``/``recv`` beside nc, socat and scp.

Run from the repository root::

    python bench/transfer_rate.py [--size 1G] [--runs 5] [--dir /dev/shm] [--json]

Each run, in rotating order, moves the same random file from one directory to another (``--dir``, tmpfs by default,
so that these are network-and-CPU figures, not disk figures):

* ``sockcat --no-code``: ``recv --no-code`` + ``send``: SHA-256 on both sides, fsync, atomic rename;
* ``sockcat code``: the same with the one-time code (SPAKE2, then AES-256-GCM records);
* ``nc``: ``nc -l`` + ``nc -N`` (OpenBSD nc), no check at all;
* ``nc + sha256sum``: the same pipe with ``sha256sum`` of the source before and of the copy after, then ``sync``:
  the verified pipeline a careful user would script around nc;
* ``socat`` and ``socat -b 262144``: ``socat -u`` from the file to a TCP listener writing the copy, no check;
* ``scp``: OpenSSH's scp to an ``sshd`` this script starts on 127.0.0.1 with throwaway keys (default cipher);
* ``sha256 ×2 (floor)``: no transfer at all, only the file hashed twice at once, as a verified transfer's two
  ends must: the least CPU any verified copy costs on this machine, measured in the same run.

The time is from starting the sender to the receiver's exit. Every copy is then checked against the source's
SHA-256 (outside the timing).

``--resume`` measures instead a 90 % part left by an interrupted run: the receiver and the sender each hash the kept
90 % (at once), then the missing 10 % travel. It is printed beside the time to hash the kept bytes once.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import Procs, free_port, listening_address, machine, parse_size, sha256_file, wait_tcp

PY = [sys.executable, "-m", "sockcat"]
SSH_OPTS = ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR"]


class Sshd:
    """A throwaway sshd on 127.0.0.1 for scp, keys and config in a temporary directory."""

    def __init__(self, procs: Procs, work: Path) -> None:
        self.dir = work / "sshd"
        self.dir.mkdir()
        for key in ("host", "client"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.dir / key)], check=True)
        shutil.copy(self.dir / "client.pub", self.dir / "authorized_keys")
        self.port = free_port()
        (self.dir / "sshd_config").write_text(
            f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {self.dir / 'host'}\n"
            f"AuthorizedKeysFile {self.dir / 'authorized_keys'}\nPidFile {self.dir / 'pid'}\n"
            "PermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
            "UsePAM no\nStrictModes no\nSubsystem sftp internal-sftp\n"
        )
        Path("/run/sshd").mkdir(exist_ok=True)  # privilege separation directory
        sshd = shutil.which("sshd") or "/usr/sbin/sshd"
        self.proc = procs.start([sshd, "-D", "-e", "-f", str(self.dir / "sshd_config")])
        wait_tcp(self.port, self.proc)

    def scp(self, src: Path, dest: Path) -> None:
        user = os.environ.get("USER") or "root"
        argv = ["scp", "-q", "-i", str(self.dir / "client"), "-P", str(self.port), *SSH_OPTS]
        subprocess.run([*argv, str(src), f"{user}@127.0.0.1:{dest}"], check=True, timeout=600)


def _sockcat(procs: Procs, src: Path, out: Path, code: bool, extra: list[str] | None = None) -> float:
    recv = procs.start([*PY, "recv", "tcp://127.0.0.1:0", "-o", str(out), *([] if code else ["--no-code"])])
    addr = listening_address(procs, recv)
    args = ["--code", re.search(r"^code: (\S+)$", procs.stderr_text(recv), re.M).group(1)] if code else []  # type: ignore[union-attr]
    t0 = time.perf_counter()
    subprocess.run([*PY, "send", *args, *(extra or []), addr, str(src)], check=True, timeout=600)
    if recv.wait(timeout=600) != 0:
        raise SystemExit(f"sockcat recv failed: {procs.stderr_text(recv)[-500:]}")
    return time.perf_counter() - t0


def _hash_twice(src: Path, length: int | None = None, copies: int = 2) -> float:
    code = (
        "import hashlib,os,sys\n"
        "fd=os.open(sys.argv[1],os.O_RDONLY);n=int(sys.argv[2]);h=hashlib.sha256();b=bytearray(1<<20);v=memoryview(b);p=0\n"
        "while p<n:\n k=os.preadv(fd,[v[:min(len(b),n-p)]],p);h.update(v[:k]);p+=k\n"
    )
    n = str(length if length is not None else src.stat().st_size)
    t0 = time.perf_counter()
    hashers = [subprocess.Popen([sys.executable, "-c", code, str(src), n]) for _ in range(copies)]
    for p in hashers:
        if p.wait(timeout=600) != 0:
            raise SystemExit("the hashing reference failed")
    return time.perf_counter() - t0


def one(tool: str, src: Path, out: Path, procs: Procs, sshd: Sshd | None) -> float:
    out.mkdir(parents=True, exist_ok=True)
    dest = out / src.name
    if tool == "sockcat --no-code":
        return _sockcat(procs, src, out, code=False)
    if tool == "sockcat code":
        return _sockcat(procs, src, out, code=True)
    if tool == "sha256 ×2 (floor)":
        shutil.copy(src, dest)  # (untimed) so that the copy check below passes
        return _hash_twice(src)
    if tool == "scp":
        assert sshd is not None
        t0 = time.perf_counter()
        sshd.scp(src, dest)
        return time.perf_counter() - t0
    port = free_port()
    if tool.startswith("nc"):
        with open(dest, "wb") as f:
            recv = subprocess.Popen(["nc", "-l", "127.0.0.1", str(port)], stdout=f)
        wait_tcp(port, recv)
        t0 = time.perf_counter()
        if tool == "nc + sha256sum":
            subprocess.run(["sha256sum", str(src)], check=True, capture_output=True, timeout=600)
        with open(src, "rb") as f:
            subprocess.run(["nc", "-N", "127.0.0.1", str(port)], stdin=f, check=True, timeout=600)
    else:
        b = ["-b", "262144"] if tool == "socat -b 262144" else []
        recv = subprocess.Popen(["socat", *b, "-u", f"TCP-LISTEN:{port},reuseaddr", f"OPEN:{dest},creat,trunc"])
        wait_tcp(port, recv)
        t0 = time.perf_counter()
        subprocess.run(["socat", *b, "-u", f"FILE:{src}", f"TCP:127.0.0.1:{port}"], check=True, timeout=600)
    if recv.wait(timeout=600) != 0:
        raise SystemExit(f"{tool}: the receiver failed")
    if tool == "nc + sha256sum":
        subprocess.run(["sha256sum", str(dest)], check=True, capture_output=True, timeout=600)
        subprocess.run(["sync", str(dest)], check=True, timeout=600)
    return time.perf_counter() - t0


def resume_one(src: Path, out: Path, procs: Procs, code: bool) -> tuple[float, float]:
    """(time of a send that resumes a 90 % part, time to hash those 90 % once)."""
    out.mkdir(parents=True, exist_ok=True)
    kept = src.stat().st_size * 9 // 10
    part = out / f".{src.name}.sockcat-part"
    with open(src, "rb") as f, open(part, "wb") as p:
        shutil.copyfileobj(f, p, length=1 << 20)
        p.truncate(kept)
    os.chmod(part, 0o600)
    return _sockcat(procs, src, out, code=code), _hash_twice(src, kept, copies=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="1G")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--dir", default="/dev/shm" if os.path.isdir("/dev/shm") else None, help="where files go")
    ap.add_argument("--tools", help="a comma-separated subset")
    ap.add_argument("--resume", action="store_true", help="measure resuming a 90 %% part instead")
    ap.add_argument("--json", action="store_true", help="the medians as one JSON object on stdout")
    args = ap.parse_args()
    size = parse_size(args.size)
    tools = ["sockcat --no-code", "sockcat code", "nc", "nc + sha256sum", "socat", "socat -b 262144", "scp"]
    tools.append("sha256 ×2 (floor)")
    if args.tools:
        tools = [t for t in tools if t in args.tools.split(",")]
    if "scp" in tools and not (shutil.which("scp") and (shutil.which("sshd") or os.path.exists("/usr/sbin/sshd"))):
        print("scp or sshd (openssh-server) missing: no scp figure", file=sys.stderr)
        tools.remove("scp")
    times: dict[str, list[float]] = {}
    procs = Procs()
    with tempfile.TemporaryDirectory(prefix="sc-xfer-", dir=args.dir) as tmp:
        work = Path(tmp)
        procs.work = work
        src = work / "data.bin"
        with open(src, "wb") as f:
            for _ in range(size // (1 << 20)):
                f.write(os.urandom(1 << 20))
        want = sha256_file(src)
        tail = work / "tail.bin"  # the bytes a 90 % resume still moves, as a file of their own
        with open(src, "rb") as whole, open(tail, "wb") as rest:
            whole.seek(size * 9 // 10)
            shutil.copyfileobj(whole, rest, length=1 << 20)
        sshd = Sshd(procs, work) if "scp" in tools and not args.resume else None
        try:
            for run in range(args.runs):
                if args.resume:
                    for code in (False, True):
                        out = work / f"resume-{code}-{run}"
                        secs, once = resume_one(src, out, procs, code)
                        if sha256_file(out / src.name) != want:
                            raise SystemExit("the resumed copy differs from the source")
                        shutil.rmtree(out)
                        name = "sockcat code" if code else "sockcat --no-code"
                        fresh = _sockcat(procs, tail, work / f"tail-{code}-{run}", code=code)
                        shutil.rmtree(work / f"tail-{code}-{run}")
                        times.setdefault(f"{name}, resume 90 %", []).append(secs)
                        times.setdefault(f"{name}, the missing 10 % as a new file", []).append(fresh)
                        times.setdefault(f"{name}, checking the kept 90 % (the difference)", []).append(secs - fresh)
                        times.setdefault("sha256 of the 90 % once", []).append(once)
                        print(
                            f"run {run + 1}/{args.runs} {name}: resume {secs:.2f} s, the 10 % alone {fresh:.2f} s, "
                            f"hash once {once:.2f} s",
                            file=sys.stderr,
                        )
                    continue
                order = tools[run % len(tools) :] + tools[: run % len(tools)]
                for tool in order:
                    out = work / f"out-{re.sub(r'[^a-z0-9]+', '_', tool)}-{run}"
                    secs = one(tool, src, out, procs, sshd)
                    if sha256_file(out / src.name) != want:
                        raise SystemExit(f"{tool}: the copy differs from the source")
                    shutil.rmtree(out)
                    times.setdefault(tool, []).append(secs)
                    print(f"run {run + 1}/{args.runs} {tool:18} {secs:6.2f} s", file=sys.stderr)
        finally:
            procs.stop_all()
    med = {t: statistics.median(v) for t, v in times.items()}
    if args.json:
        report: dict[str, Any] = {
            "size": size,
            "runs": args.runs,
            "dir": args.dir,
            "median_s": med,
            "machine": machine(),
        }
        print(json.dumps(report, indent=2))
        return
    where = f"in {args.dir}" if args.dir else "in a temporary directory"
    print(f"One {args.size} file over 127.0.0.1, {where}, {args.runs} runs in rotating order; {machine()}\n")
    print("| tool | seconds (median) | MiB/s | time × nc's |")
    print("|---|---:|---:|---:|")
    for t, m in med.items():
        vs_nc = f"{m / med['nc']:.2f}" if "nc" in med else "—"
        print(f"| {t} | {m:.2f} | {size / m / (1 << 20):,.0f} | {vs_nc} |")


if __name__ == "__main__":
    main()
