"""A chat client's steps that go through the cluster (:mod:`.cluster`): claiming a name cluster-wide, a /msg to
another broker or to Redis's mail, and handing out the mail Redis keeps (docs/chat.md#clusters)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from sockcat.core import chatproto as proto
from sockcat.engines.chat.broker import Client as BrokerClient

if TYPE_CHECKING:
    from sockcat.engines.chat.broker import Broker
    from sockcat.engines.chat.cluster import Cluster


class Client(BrokerClient, Protocol):
    """What these steps use of a :class:`~.client.Client` (named here, not imported: the client calls them)."""

    broker: Broker
    origin: str
    lost: bool
    closing: bool
    unacked: list[int]
    more_mail: bool

    def _refused(self, why: str) -> None: ...
    def _took(self, name: str, everyone: int | None = None) -> None: ...


async def claim(client: Client, name: str) -> None:
    """Hold the name cluster-wide before taking it (a name is one connection's in every broker)."""
    b = client.broker
    assert b.cluster is not None
    key = proto.name_key(name)
    held = await b.cluster.claim(key, name)
    if held is False:
        client._refused(f"{name} is taken")
        return
    again = b.refuse_name(name, client)
    if again is not None or client.lost or client.closing:  # (taken here meanwhile, or this client is gone)
        if held and b.online.get(key) is None:
            b.cluster.later(b.cluster.release(key))
        if again is not None:
            client._refused(again)
        return
    everyone = await b.cluster.online_count() if held else None
    if client.lost or client.closing:
        b.cluster.later(b.cluster.release(key))
        return
    client._took(name, everyone or None)
    if held is None:
        client.send(proto.notice("the cluster is unreachable: your name is checked on this broker only for now"))


async def keep(client: Client, cluster: Cluster, name: str, sender: str, text: str) -> None:
    """/msg NAME for a name not on this broker: to the broker that holds it, else into Redis's mail."""
    key = proto.name_key(name)
    sent = await cluster.send_to(key, proto.msg_line(sender, text))
    if sent:
        return  # online on another broker: delivered there
    why = None
    if sent is not None:
        q = client.broker.store.quotas
        refused = await cluster.mail.store(key, sender, proto.name_key(sender), client.origin, text, q)
        if refused == 0:
            client.send(proto.notice(f"{name} is offline; message stored"))
            return
        if refused is not None:
            why = {
                1: f"that mailbox is full ({q.per_recipient} messages wait)",
                2: f"you have {q.per_sender} messages waiting to be delivered already",
                3: f"your address has {q.per_origin} messages waiting to be delivered already",
                4: "the cluster's store is full",
            }[refused]
    client.send(proto.error(f"not stored: {why or 'the cluster is unreachable'}"))


async def mail_page(client: Client, cluster: Cluster, key: str, size: int) -> None:
    """The next page of the mail Redis keeps for ``key``, exactly as live /msg lines; it leaves Redis once the
    kernel has taken it (``Client._ack``), so a broker killed meanwhile hands it out again, never loses it."""
    if client.unacked:
        client.more_mail = True
        return
    page = await cluster.mail.page(key, size)
    if not page or client.name is None or proto.name_key(client.name) != key or client.lost:
        return
    for sender, text in page:
        client.send(proto.msg_line(sender, text))
    client.unacked += [0] * len(page)  # (a count: the first len(page) messages of the mailbox)
    client.more_mail = len(page) >= size


async def take(client: Client, name: str, password: str | None) -> None:
    """Join as ``name`` in a cluster: its protection and look-alikes checked in Redis (the broker's own store
    when Redis cannot say), its password off the loop, then the name claimed cluster-wide."""
    b = client.broker
    cluster = b.cluster
    assert cluster is not None
    key = proto.name_key(name)
    like = await cluster.protected_like(proto.skeleton(name))
    if isinstance(like, str) and like != key:
        client._refused(f"{name} looks too much like a protected name")
        return
    credentials = await cluster.credentials(key)
    if credentials is cluster._DOWN:
        credentials = b.store.credentials(key)
    if credentials is None:
        await claim(client, name)
        return
    if password is None:
        client._refused(f"{name} is protected: /nick {name} PASSWORD")
        return
    assert isinstance(credentials, tuple)
    if not await b.guard.check(password, credentials, key, client.origin):
        client._refused(f"wrong password for {name}")
        return
    await claim(client, name)


async def register(client: Client, name: str, salt: bytes, hashed: bytes) -> None:
    b = client.broker
    assert b.cluster is not None
    key, look = proto.name_key(name), proto.skeleton(name)
    if not await b.cluster.register(key, look, salt, hashed):
        client.send(proto.error("not registered: the cluster is unreachable; try again later"))
        return
    await b.store.register(key, look, salt, hashed)  # (also here: the broker checks it when Redis cannot)
    client.send(proto.notice(f"{name} is protected: next time, /nick {name} PASSWORD"))
