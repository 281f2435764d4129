"""``sockcat chat --cluster`` (docs/chat.md#clusters): brokers sharing a real ``redis-server`` are one chat.
Users on different brokers see each other's lines, /msg each other and /who lists everyone; a name is held by one
connection in the whole cluster, also when two brokers are asked for it at once; a killed broker's names are free
once their leases end; a broker that loses Redis keeps serving its own users, says so, and rejoins."""

from __future__ import annotations

import contextlib
import hashlib
import json
import signal
import socket
import sqlite3
import ssl
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis as redis_client
import trustme
from conftest import TIMEOUT, Proc, free_port, require, run_sockcat, sockcat, wait_port, wait_until

from sockcat import Address
from sockcat.engines.chat.cluster import NAME_LEASE

pytestmark = pytest.mark.timeout(90)


class Redis:
    def __init__(self, tmp: Path, procs: list[Proc]) -> None:
        self.tmp, self.procs = tmp, procs
        self.port = free_port()
        self.unix = tmp / "redis.sock"
        self.proc: Proc | None = None

    def start(self) -> None:
        argv = [
            require("redis-server"),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "yes",
            "--dir",
            str(self.tmp),
            "--unixsocket",
            str(self.unix),
        ]
        self.proc = Proc(argv, stdout=subprocess.DEVNULL)
        self.procs.append(self.proc)
        wait_port(self.port)

    def stop(self) -> None:
        assert self.proc is not None
        self.proc.p.send_signal(signal.SIGTERM)
        self.proc.wait()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


@pytest.fixture
def redis(tmp_path: Path, procs: list[Proc]) -> Iterator[Redis]:
    r = Redis(tmp_path, procs)
    r.start()
    yield r


class User:
    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        self.file = self.sock.makefile("rwb", buffering=0)
        assert "your name?" in self.line()

    def send(self, text: str) -> None:
        self.file.write(text.encode() + b"\n")

    def line(self) -> str:
        data = self.file.readline()
        assert data, "the broker closed the connection"
        return data.decode().rstrip("\n")

    def until(self, prefix: str) -> str:
        while not (line := self.line()).startswith(prefix):
            pass
        return line

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def broker(procs: list[Proc], url: str) -> tuple[Proc, int]:
    p = Proc(sockcat("-v", "chat", "--db", ":memory:", "--line-rate", "0", "--cluster", url, "tcp://127.0.0.1:0"))
    procs.append(p)
    port = Address.parse(p.read_listening()).port
    p.wait_stderr(": connected")
    return p, port


def join(port: int, name: str) -> User:
    u = User(port)
    u.send(name)
    hello = u.line()
    assert hello.startswith(f"* hello {name};"), hello
    return u


def test_two_brokers_are_one_chat(redis: Redis, procs: list[Proc]) -> None:
    _a, pa = broker(procs, redis.url)
    _b, pb = broker(procs, f"redis+unix:{redis.unix}")  # the same Redis over its Unix socket
    wang = join(pa, "小王")
    zhang = User(pb)
    zhang.send("小张")
    assert zhang.line() == "* hello 小张; 1 other online; /help lists the commands"  # counted cluster-wide
    assert wang.line() == "* 小张 joined"
    wang.send("你好")
    assert zhang.line() == "<小王> 你好"
    zhang.send("/msg 小王 私聊")
    assert wang.line() == "*小张* 私聊"
    for u in (wang, zhang):
        u.send("/who")
        assert u.line() == "* online (2): 小张, 小王"
    lines = [f"line {i}" for i in range(200)]
    for text in lines:
        wang.send(text)
    assert [zhang.line() for _ in lines] == [f"<小王> {t}" for t in lines]  # every one, once, in order
    for i in range(20):  # room lines and /msg lines of one sender keep their order too
        wang.send(f"room {i}")
        wang.send(f"/msg 小张 direct {i}")
    got = [zhang.line() for _ in range(40)]
    assert got == [x for i in range(20) for x in (f"<小王> room {i}", f"*小王* direct {i}")], got
    wang.close()
    assert zhang.line() == "* 小王 left"


def test_a_name_is_one_connections_in_the_whole_cluster(redis: Redis, procs: list[Proc]) -> None:
    _a, pa = broker(procs, redis.url)
    _b, pb = broker(procs, redis.url)
    for i in range(10):
        name = f"racer{i}"
        users = [User(pa), User(pb)]
        start = threading.Barrier(2)
        answers: list[str] = ["", ""]

        def claim(
            k: int,
            name: str = name,
            users: list[User] = users,
            answers: list[str] = answers,
            start: threading.Barrier = start,
        ) -> None:
            start.wait()
            users[k].send(name)
            answers[k] = users[k].line()

        threads = [threading.Thread(target=claim, args=(k,)) for k in (0, 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(TIMEOUT)
        won = [a for a in answers if a.startswith(f"* hello {name};")]
        lost = [a for a in answers if a == f"! {name} is taken; your name?"]
        assert len(won) == 1 and len(lost) == 1, answers
        for u in users:
            u.close()


def test_a_burst_of_joins_never_takes_a_name_another_broker_holds(redis: Redis, procs: list[Proc]) -> None:
    """150 clients ask broker B at once for the names 150 users hold on broker A. Every one is refused: the burst
    queues for Redis connections instead of failing (redis-py's "Too many connections" once made the cluster look
    unreachable, and B then gave the names out locally)."""
    _a, pa = broker(procs, redis.url)
    b, pb = broker(procs, redis.url)
    holders = [join(pa, f"h{i}") for i in range(150)]
    rivals = [User(pb) for _ in range(150)]
    for i, rival in enumerate(rivals):
        rival.send(f"h{i}")
    answers = [rival.line() for rival in rivals]
    assert answers == [f"! h{i} is taken; your name?" for i in range(150)], {a for a in answers if "taken" not in a}
    assert b.stderr_count("unreachable") == 0
    for u in [*holders, *rivals]:
        u.close()


def test_a_killed_brokers_names_are_free_after_the_lease(redis: Redis, procs: list[Proc]) -> None:
    a, pa = broker(procs, redis.url)
    _b, pb = broker(procs, redis.url)
    alice = join(pa, "alice")  # (kept: a dropped User would close its connection)
    other = User(pb)
    other.send("alice")
    assert other.line() == "! alice is taken; your name?", a.stderr_all(0.5)
    a.p.kill()  # SIGKILL: no chance to release anything

    def free() -> bool:
        other.send("alice")
        return other.line().startswith("* hello alice;")

    wait_until(free, "alice free on the other broker", timeout=NAME_LEASE + 5, interval=0.5)
    alice.close()


def test_losing_redis_keeps_local_users_served_and_rejoins(redis: Redis, procs: list[Proc]) -> None:
    _a, pa = broker(procs, redis.url)
    b, pb = broker(procs, redis.url)
    one, two = join(pa, "one"), join(pa, "two")
    far = join(pb, "far")
    one.until("* two joined")
    two.until("* far joined")
    redis.stop()
    assert one.until("* the cluster is unreachable").startswith("* the cluster is unreachable")
    two.until("* the cluster is unreachable")
    one.send("still here")
    assert two.line() == "<one> still here"  # local lines go on
    redis.start()
    one.until("* the cluster is reachable again")
    b.wait_stderr(": connected", count=2)

    def heard() -> bool:
        one.send("across again")
        try:
            far.sock.settimeout(0.5)
            return far.until("<one> across again") == "<one> across again"
        except (TimeoutError, OSError):
            return False
        finally:
            far.sock.settimeout(TIMEOUT)

    wait_until(heard, "a line across brokers once Redis is back", timeout=15, interval=0.2)


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:6379/0", "redis://", "redis://h:99999/0", "redis://h:1/db", "redis+unix:"]
)
def test_a_bad_cluster_url_is_a_usage_error(url: str) -> None:
    r = run_sockcat("chat", "--db", ":memory:", "--cluster", url, "tcp://127.0.0.1:0")
    assert r.returncode == 2
    assert r.stderr.decode().startswith("sockcat: error: bad --cluster URL"), r.stderr


def test_the_password_never_shows_in_logs(redis: Redis, procs: list[Proc]) -> None:
    p = Proc(
        sockcat("-v", "chat", "--db", ":memory:", "--cluster", "redis://u:s3cret@127.0.0.1:1/0", "tcp://127.0.0.1:0")
    )
    procs.append(p)
    p.read_listening()
    line = p.wait_stderr("cluster redis://")[0]
    assert "s3cret" not in line and "u:***@127.0.0.1:1" in line, line


def test_offline_mail_is_kept_in_redis_and_delivered_once_on_any_broker(redis: Redis, procs: list[Proc]) -> None:
    _a, pa = broker(procs, redis.url)
    _b, pb = broker(procs, redis.url)
    zhang = join(pb, "小张")
    for i in range(3):
        zhang.send(f"/msg 小王 留言 {i}")
        assert zhang.line() == "* 小王 is offline; message stored"
    redis.stop()  # with AOF on: what Redis acknowledged survives its restart
    redis.start()
    zhang.until("* the cluster is reachable again")
    _a.wait_stderr(": connected", count=2)
    wang = join(pa, "小王")  # on the other broker
    assert [wang.line() for _ in range(3)] == [f"*小张* 留言 {i}" for i in range(3)]
    wang.close()

    def empty() -> bool:
        again = User(pa)
        again.send("小王")
        hello = again.line()
        again.send("/who")
        rest = again.line()
        again.close()
        return hello.startswith("* hello 小王;") and rest.startswith("* online")  # no mail line in between

    wait_until(empty, "the delivered mail gone from Redis", interval=0.3)


def test_old_mail_expires_in_redis_and_names_are_never_its_keys(redis: Redis, procs: list[Proc]) -> None:
    """Mail kept longer than the expiry (30 days) is dropped, with its counts, by the next broker that reaches
    Redis; the rest is delivered. A user named ``total`` (a name like the keys beside the mailboxes) has a
    mailbox like anyone's."""
    a, pa = broker(procs, redis.url)
    zhang = join(pa, "小张")
    for to, text in [("total", "for total"), ("小王", "old"), ("小王", "new")]:
        zhang.send(f"/msg {to} {text}")
        assert zhang.line() == f"* {to} is offline; message stored"
    zhang.close()
    a.p.send_signal(signal.SIGTERM)  # (its own expiry, a second after it started, must not be the one seen)
    assert a.wait() == 0
    r = redis_client.Redis(port=redis.port, decode_responses=True)
    box = "sockcat:mail:box:小王"
    oldest = json.loads(r.lindex(box, 0))
    assert oldest["t"] == "old"
    oldest["c"] -= 31 * 86400  # as if kept since a month ago
    r.lset(box, 0, json.dumps(oldest))
    b, pb = broker(procs, redis.url)  # expires on reaching Redis
    b.wait_stderr("cluster: 1 stored messages older than 30 days dropped")
    assert r.get("sockcat:mail:total") == "2"
    wang = join(pb, "小王")
    assert wang.line() == "*小张* new"
    total = join(pb, "total")
    assert total.line() == "*小张* for total"
    wait_until(lambda: r.get("sockcat:mail:total") == "0", "the delivered mail out of the counts")
    assert r.hget("sockcat:mail:by-sender", "小张") == "0"
    assert r.llen(box) == 0 and r.llen("sockcat:mail:box:total") == 0


def test_mail_kept_before_cluster_is_handed_over_to_redis(redis: Redis, procs: list[Proc], tmp_path: Path) -> None:
    """Mail a broker stored on its own (no ``--cluster``) is not stranded when it joins a cluster: it moves into
    Redis, in order, and the recipient gets it on another broker, once."""
    db = str(tmp_path / "own.sqlite3")
    alone = Proc(sockcat("chat", "--db", db, "tcp://127.0.0.1:0"))
    procs.append(alone)
    zhang = join(Address.parse(alone.read_listening()).port, "小张")
    for i in range(3):
        zhang.send(f"/msg 小王 旧 {i}")
        assert zhang.line() == "* 小王 is offline; message stored"
    zhang.close()
    alone.p.send_signal(signal.SIGTERM)
    assert alone.wait() == 0
    a = Proc(sockcat("-v", "chat", "--db", db, "--cluster", redis.url, "tcp://127.0.0.1:0"))
    procs.append(a)
    a.read_listening()
    a.wait_stderr("cluster: 3 stored messages handed over to Redis")
    with contextlib.closing(sqlite3.connect(db)) as own:
        assert own.execute("SELECT COUNT(*) FROM mail").fetchone()[0] == 0  # moved, not copied
    _b, pb = broker(procs, redis.url)
    wang = join(pb, "小王")
    assert [wang.line() for _ in range(3)] == [f"*小张* 旧 {i}" for i in range(3)]
    wang.send("/who")
    assert wang.line().startswith("* online"), "a message came twice"
    r = redis_client.Redis(port=redis.port, decode_responses=True)
    wait_until(lambda: r.get("sockcat:mail:total") == "0", "the delivered mail out of Redis")


def test_a_name_registered_on_one_broker_is_protected_on_all(redis: Redis, procs: list[Proc]) -> None:
    _a, pa = broker(procs, redis.url)
    _b, pb = broker(procs, redis.url)
    alice = join(pa, "alice")
    alice.send("/register correct horse battery")
    assert alice.line() == "* alice is protected: next time, /nick alice PASSWORD"
    alice.send("/quit")
    alice.until("* bye")
    alice.close()
    other = User(pb)
    other.send("alice")
    assert other.line() == "! alice is protected: /nick alice PASSWORD; your name?"
    other.send("aIice")  # a capital I: looks like alice
    assert other.line() == "! aIice looks too much like a protected name; your name?"
    other.send("/nick alice wrong guess")
    assert other.line() == "! wrong password for alice; your name?"
    other.send("/nick alice correct horse battery")
    assert other.line().startswith("* hello alice;")


# --- several machines: network namespaces joined by veth pairs on a bridge ------------------------------------------


class Net:
    """Four "machines" (network namespaces) on one bridge: redis .1, broker A .2, broker B .3, clients .4."""

    def __init__(self) -> None:
        tag = uuid.uuid4().hex[:6]
        self.subnet = f"10.{77 + int(tag[:2], 16) % 100}.{int(tag[2:4], 16)}"
        self.bridge = f"scbr{tag}"
        self.names = {role: f"sc-{role}-{tag}" for role in ("redis", "a", "b", "clients")}
        self.created: list[str] = []

    def ip(self, role: str) -> str:
        return f"{self.subnet}.{list(self.names).index(role) + 1}"

    def up(self) -> None:
        run = lambda *cmd: subprocess.run(cmd, check=True, timeout=30, capture_output=True)  # noqa: E731
        run("ip", "link", "add", self.bridge, "type", "bridge")
        self.created.append(self.bridge)
        run("ip", "link", "set", self.bridge, "up")
        for i, (role, ns) in enumerate(self.names.items()):
            run("ip", "netns", "add", ns)
            self.created.append(ns)
            host, peer = f"v{self.bridge[4:]}{i}h", f"v{self.bridge[4:]}{i}n"
            run("ip", "link", "add", host, "type", "veth", "peer", "name", peer, "netns", ns)
            run("ip", "link", "set", host, "master", self.bridge, "up")
            run("ip", "netns", "exec", ns, "ip", "addr", "add", f"{self.ip(role)}/24", "dev", peer)
            run("ip", "netns", "exec", ns, "ip", "link", "set", peer, "up")
            run("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")

    def down(self) -> None:
        for name in reversed(self.created):
            if name == self.bridge:
                subprocess.run(["ip", "link", "del", name], check=False, capture_output=True)
            else:
                subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)

    def inside(self, role: str, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.names[role], *argv]

    def cut(self, role: str, other: str) -> None:
        """Drop every packet between ``role`` and ``other`` (in ``role``'s namespace, both ways)."""
        ns = self.names[role]
        for cmd in (
            ["nft", "add", "table", "inet", "cut"],
            ["nft", "add", "chain", "inet", "cut", "in", "{ type filter hook input priority 0; }"],
            ["nft", "add", "chain", "inet", "cut", "out", "{ type filter hook output priority 0; }"],
            ["nft", "add", "rule", "inet", "cut", "in", "ip", "saddr", self.ip(other), "drop"],
            ["nft", "add", "rule", "inet", "cut", "out", "ip", "daddr", self.ip(other), "drop"],
        ):
            subprocess.run(["ip", "netns", "exec", ns, *cmd], check=True, timeout=30, capture_output=True)

    def heal(self, role: str) -> None:
        subprocess.run(self.inside(role, ["nft", "delete", "table", "inet", "cut"]), check=True, timeout=30)


class NcUser:
    """A chat user on OpenBSD nc, run on the clients' machine."""

    def __init__(self, net: Net, procs: list[Proc], host: str, port: int, name: str) -> None:
        argv = net.inside("clients", [require("nc"), "-N", host, str(port)])
        self.p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert self.p.stdin is not None and self.p.stdout is not None
        self.stdin, self.stdout = self.p.stdin, self.p.stdout
        assert "your name?" in self.line()
        self.send(name)
        hello = self.line()
        assert hello.startswith(f"* hello {name};"), hello

    def send(self, text: str) -> None:
        self.stdin.write(text.encode() + b"\n")
        self.stdin.flush()

    def line(self) -> str:
        return self.stdout.readline().decode().rstrip("\n")

    def until(self, prefix: str) -> str:
        while not (line := self.line()).startswith(prefix):
            assert line, f"nc ended before {prefix!r}"
        return line

    def close(self) -> None:
        self.p.kill()
        self.p.wait(TIMEOUT)


def test_a_broker_cut_off_from_redis_on_another_machine_serves_locally_then_rejoins(
    procs: list[Proc], tmp_path: Path
) -> None:
    for tool in ("ip", "nft"):
        require(tool)
    net = Net()
    users: list[NcUser] = []
    try:
        net.up()
        redis_argv = [require("redis-server"), "--port", "6379", "--bind", net.ip("redis"), "--save", "",
                      "--appendonly", "no", "--dir", str(tmp_path), "--protected-mode", "no"]  # fmt: skip
        r = Proc(net.inside("redis", redis_argv), stdout=subprocess.DEVNULL)
        procs.append(r)
        url = f"redis://{net.ip('redis')}:6379/0"
        brokers = {}
        for role in ("a", "b"):
            argv = sockcat("-v", "chat", "--db", ":memory:", "--cluster", url, f"tcp://{net.ip(role)}:7777")
            p = Proc(net.inside(role, argv))
            procs.append(p)
            p.read_listening()
            p.wait_stderr(": connected")
            brokers[role] = p
        one = NcUser(net, procs, net.ip("a"), 7777, "one")
        two = NcUser(net, procs, net.ip("a"), 7777, "two")
        far = NcUser(net, procs, net.ip("b"), 7777, "far")
        users += [one, two, far]
        one.until("* two joined")
        one.until("* far joined")
        one.send("hello everyone")
        assert far.until("<one>") == "<one> hello everyone"

        net.cut("a", "redis")  # a partition: packets dropped, nothing reset
        assert one.until("* the cluster is unreachable").startswith("* the cluster is unreachable")
        two.until("* the cluster is unreachable")
        one.send("only on this broker")
        assert two.until("<one>") == "<one> only on this broker"  # local service goes on

        net.heal("a")
        one.until("* the cluster is reachable again")
        brokers["a"].wait_stderr(": connected", count=2)

        one.send("across again")
        assert far.until("<one> across") == "<one> across again"  # (the line said during the cut never came)
        far.send("/who")
        assert far.until("* online") == "* online (3): far, one, two"
    finally:
        for u in users:
            u.close()
        for p in list(procs):
            p.kill()
        net.down()


def test_rediss_with_a_cluster_ca(procs: list[Proc], tmp_path: Path) -> None:
    """Redis over TLS: trusted through --cluster-ca; without it, the broker's certificate check refuses Redis."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    (tmp_path / "ca.pem").write_bytes(ca.cert_pem.bytes())
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "server.pem"))
    port = free_port()
    pem, capem = str(tmp_path / "server.pem"), str(tmp_path / "ca.pem")
    argv = [require("redis-server"), "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--tls-cert-file", pem, "--tls-key-file", pem, "--tls-ca-cert-file", capem, "--tls-auth-clients", "no",
            "--dir", str(tmp_path)]  # fmt: skip
    r = Proc(argv, stdout=subprocess.DEVNULL)
    procs.append(r)
    wait_port(port)
    url = f"rediss://127.0.0.1:{port}/0"
    good = Proc(sockcat("-v", "chat", "--db", ":memory:", "--cluster", url, "--cluster-ca", str(tmp_path / "ca.pem"),
                        "tcp://127.0.0.1:0"))  # fmt: skip
    procs.append(good)
    good.read_listening()
    good.wait_stderr(": connected")
    bad = Proc(sockcat("-v", "chat", "--db", ":memory:", "--cluster", url, "tcp://127.0.0.1:0"))
    procs.append(bad)
    bad.read_listening()
    assert "unreachable" in bad.wait_stderr(f"cluster {url}")[0]
    r2 = run_sockcat("chat", "--db", ":memory:", "--cluster-ca", "x.pem", "tcp://127.0.0.1:0")
    assert r2.returncode == 2 and b"needs a rediss://" in r2.stderr

    # --pin: exactly Redis's certificate, with no CA (the name is not checked either: 127.0.0.2 is not in it)
    der = ssl.PEM_cert_to_DER_cert(cert.cert_chain_pems[0].bytes().decode())
    fingerprint = ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest())
    pinned = Proc(sockcat("-v", "chat", "--db", ":memory:", "--cluster", url.replace("127.0.0.1", "localhost"),
                          "--pin", fingerprint.lower(), "tcp://127.0.0.1:0"))  # fmt: skip
    procs.append(pinned)
    pinned.read_listening()
    pinned.wait_stderr(": connected")
    wrong = Proc(sockcat("-v", "chat", "--db", ":memory:", "--cluster", url, "--pin", "00" * 32, "tcp://127.0.0.1:0"))
    procs.append(wrong)
    wrong.read_listening()
    line = wrong.wait_stderr(f"cluster {url}")[0]
    assert "unreachable" in line and f"the certificate is not the pinned one (its sha256 is {fingerprint})" in line
    for bad, why in [(["--pin", "xyz"], b"bad --pin"), (["--pin", fingerprint, "--cluster-ca", capem], b"give one")]:
        r3 = run_sockcat("chat", "--db", ":memory:", "--cluster", url, *bad, "tcp://127.0.0.1:0")
        assert r3.returncode == 2 and why in r3.stderr and r3.stderr.count(b"\n") == 1, r3.stderr
