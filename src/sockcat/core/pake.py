"""The one-time code of ``sockcat recv`` and what it protects (pure: no I/O).

A code such as ``7-crossover-clockwork`` is a number and two words a person can read aloud. It is never sent,
not even hashed: both sides run SPAKE2 (a password-authenticated key exchange, as magic-wormhole does) with it,
so an eavesdropper learns nothing it could guess offline, and a peer without the code gets exactly one guess
per connection. Each side proves it derived the same key (key confirmation) before anything else happens; the
key then seals every following byte in AES-256-GCM records (``docs/transfer.md`` has the exact format).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import struct
from typing import Any

# spake2 and cryptography are imported where they are used: together they cost 30 ms of start-up, which only a
# session with a code needs (``recv --no-code`` and the code generator do without them).

# 256 short, common words: two of them and a number from 1 to 999 give about 26 bits, plenty when every guess
# costs a connection and the receiver slows down after each wrong one.
WORDS = (
    "acorn",
    "admiral",
    "almond",
    "anchor",
    "angel",
    "apple",
    "apricot",
    "arcade",
    "arrow",
    "atlas",
    "autumn",
    "avocado",
    "badger",
    "bagel",
    "bakery",
    "bamboo",
    "banjo",
    "barley",
    "basket",
    "beacon",
    "beaver",
    "biscuit",
    "blanket",
    "blossom",
    "bonfire",
    "bramble",
    "breeze",
    "bridge",
    "bronze",
    "bucket",
    "buffalo",
    "butter",
    "cabin",
    "cactus",
    "camel",
    "candle",
    "canoe",
    "canyon",
    "captain",
    "carbon",
    "carpet",
    "castle",
    "cattle",
    "cedar",
    "cellar",
    "cement",
    "cherry",
    "chimney",
    "cider",
    "cinnamon",
    "circus",
    "clover",
    "cobalt",
    "coconut",
    "comet",
    "compass",
    "copper",
    "coral",
    "cotton",
    "cowboy",
    "coyote",
    "crayon",
    "cricket",
    "crystal",
    "cupboard",
    "dancer",
    "dolphin",
    "domino",
    "donkey",
    "dragon",
    "drummer",
    "eagle",
    "ember",
    "engine",
    "falcon",
    "feather",
    "ferry",
    "fiddle",
    "figure",
    "flamingo",
    "forest",
    "fossil",
    "fountain",
    "fox",
    "galaxy",
    "garden",
    "garlic",
    "gazelle",
    "giant",
    "ginger",
    "glacier",
    "goblin",
    "gondola",
    "gopher",
    "granite",
    "gravel",
    "guitar",
    "hammock",
    "harbor",
    "harvest",
    "hazel",
    "helmet",
    "heron",
    "hickory",
    "honey",
    "horizon",
    "husky",
    "iceberg",
    "igloo",
    "indigo",
    "island",
    "ivory",
    "jacket",
    "jaguar",
    "jasmine",
    "jelly",
    "jigsaw",
    "jungle",
    "juniper",
    "kayak",
    "kettle",
    "kitten",
    "koala",
    "ladder",
    "lagoon",
    "lantern",
    "laser",
    "lemon",
    "leopard",
    "lilac",
    "lobster",
    "locket",
    "lotus",
    "magnet",
    "mango",
    "maple",
    "marble",
    "meadow",
    "melon",
    "meteor",
    "mirror",
    "mitten",
    "monsoon",
    "mosaic",
    "muffin",
    "mustard",
    "narwhal",
    "nectar",
    "needle",
    "nickel",
    "noodle",
    "nutmeg",
    "oasis",
    "oatmeal",
    "ocean",
    "olive",
    "onion",
    "orange",
    "orbit",
    "orchid",
    "otter",
    "oyster",
    "paddle",
    "palace",
    "panda",
    "papaya",
    "parrot",
    "peanut",
    "pebble",
    "pelican",
    "pepper",
    "pickle",
    "pigeon",
    "pilot",
    "pirate",
    "planet",
    "plum",
    "pocket",
    "pony",
    "poppy",
    "potato",
    "pretzel",
    "puffin",
    "pumpkin",
    "puzzle",
    "quartz",
    "quill",
    "rabbit",
    "raccoon",
    "radar",
    "radish",
    "raven",
    "ribbon",
    "river",
    "robin",
    "rocket",
    "saddle",
    "saffron",
    "salmon",
    "sapphire",
    "satchel",
    "scarf",
    "seagull",
    "sequoia",
    "shadow",
    "sherbet",
    "signal",
    "silver",
    "sketch",
    "sparrow",
    "spider",
    "spinach",
    "sponge",
    "squirrel",
    "stable",
    "station",
    "summit",
    "sunset",
    "swallow",
    "tablet",
    "tango",
    "teapot",
    "thimble",
    "thistle",
    "thunder",
    "tiger",
    "timber",
    "toffee",
    "tomato",
    "topaz",
    "tortoise",
    "trumpet",
    "tulip",
    "tundra",
    "turnip",
    "turtle",
    "tuxedo",
    "umbrella",
    "unicorn",
    "valley",
    "velvet",
    "violet",
    "volcano",
    "waffle",
    "wagon",
    "walnut",
    "walrus",
    "willow",
    "window",
    "winter",
    "wizard",
    "wombat",
    "yogurt",
    "zebra",
    "zeppelin",
    "zigzag",
)
MAX_NUMBER = 999
MAX_CODE = 200  # characters of a code given by hand

SENDER_ID = b"sockcat-transfer-2 send"
RECEIVER_ID = b"sockcat-transfer-2 recv"

RECORD = 1 << 20  # plaintext bytes per sealed record, at most
TAG = 16
HEADER = struct.Struct("!I")  # the ciphertext's length (tag included)


class CodeError(ValueError):
    """The peer does not hold the same code (or the handshake was tampered with)."""


class SealError(ValueError):
    """A sealed record that does not open: tampered with, replayed, reordered, or cut."""


def make_code() -> str:
    """A fresh random code: ``NUMBER-WORD-WORD``."""
    n = secrets.randbelow(MAX_NUMBER) + 1
    return f"{n}-{secrets.choice(WORDS)}-{secrets.choice(WORDS)}"


def normalize_code(text: str) -> str:
    """The code as both sides compare it: case, spaces and dashes between its parts do not matter
    (``7 Crossover clockwork`` is ``7-crossover-clockwork``). A given code may be any text."""
    norm = "-".join(text.replace("-", " ").lower().split())
    if not norm:
        raise ValueError("the code is empty")
    if len(norm) > MAX_CODE:
        raise ValueError(f"the code is longer than {MAX_CODE} characters")
    return norm


def _hkdf(key: bytes, purpose: bytes) -> bytes:
    from cryptography.hazmat.primitives.hashes import SHA256
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    return HKDF(algorithm=SHA256(), length=32, salt=None, info=b"sockcat transfer 2 " + purpose).derive(key)


class Keys:
    """What one exchange yields: a confirmation for each side, and one sealing key per direction."""

    def __init__(self, key: bytes, transcript: bytes) -> None:
        self.sender_confirm = hmac.new(_hkdf(key, b"confirm send"), transcript, hashlib.sha256).digest()
        self.receiver_confirm = hmac.new(_hkdf(key, b"confirm recv"), transcript, hashlib.sha256).digest()
        self.send_to_recv = _hkdf(key, b"seal send->recv")
        self.recv_to_send = _hkdf(key, b"seal recv->send")


class SenderHandshake:
    """The sending side: ``start()`` gives the first message; ``finish()`` takes the receiver's answer."""

    def __init__(self, code: str) -> None:
        from spake2 import SPAKE2_A  # type: ignore[import-untyped]

        self._pake = SPAKE2_A(normalize_code(code).encode(), idA=SENDER_ID, idB=RECEIVER_ID)
        self._msg = b""

    def start(self) -> bytes:
        self._msg = bytes(self._pake.start())
        return self._msg

    def finish(self, reply: bytes, receiver_confirm: bytes) -> Keys:
        """The keys, once the receiver proved it holds the code; CodeError if it did not."""
        try:
            key = self._pake.finish(reply)
        except Exception:  # spake2 raises several kinds for a malformed element
            raise CodeError("bad key-exchange message") from None
        keys = Keys(key, self._msg + reply)
        if not hmac.compare_digest(keys.receiver_confirm, receiver_confirm):
            raise CodeError("wrong code")
        return keys


class ReceiverHandshake:
    """The receiving side: ``respond()`` answers the sender's message; ``check()`` its confirmation."""

    def __init__(self, code: str) -> None:
        from spake2 import SPAKE2_B

        self._pake = SPAKE2_B(normalize_code(code).encode(), idA=SENDER_ID, idB=RECEIVER_ID)
        self.keys: Keys | None = None

    def respond(self, msg: bytes) -> tuple[bytes, bytes]:
        """(our message, our confirmation) for the sender's first message."""
        reply = bytes(self._pake.start())
        try:
            key = self._pake.finish(msg)
        except Exception:  # spake2 raises several kinds for a malformed element
            raise CodeError("bad key-exchange message") from None
        self.keys = Keys(key, msg + reply)
        return reply, self.keys.receiver_confirm

    def check(self, sender_confirm: bytes) -> Keys:
        if self.keys is None or not hmac.compare_digest(self.keys.sender_confirm, sender_confirm):
            raise CodeError("wrong code")
        return self.keys


def _aead(key: bytes) -> Any:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    return AESGCM(key)


class Sealer:
    """Seals one direction's records: AES-256-GCM, the record counter as nonce, the header as associated data.
    A record can be neither changed, dropped, replayed nor reordered without the opener noticing."""

    def __init__(self, key: bytes) -> None:
        self._aead = _aead(key)
        self._n = 0

    def seal(self, data: bytes | memoryview) -> tuple[bytes, bytes]:
        """(header, ciphertext) of one record of at most :data:`RECORD` bytes."""
        if len(data) > RECORD:
            raise ValueError("record too long")
        header = HEADER.pack(len(data) + TAG)
        nonce = self._n.to_bytes(12, "big")
        self._n += 1
        return header, self._aead.encrypt(nonce, data, header)


class Opener:
    """Opens the records of one direction, in order."""

    def __init__(self, key: bytes) -> None:
        self._aead = _aead(key)
        self._n = 0

    @staticmethod
    def length(header: bytes) -> int:
        """The ciphertext length a header announces; SealError past the limit."""
        (n,) = HEADER.unpack(header)
        if not TAG <= n <= RECORD + TAG:
            raise SealError("bad record length")
        return int(n)

    def open(self, header: bytes, ciphertext: bytes | bytearray | memoryview) -> bytes:
        nonce = self._n.to_bytes(12, "big")
        try:
            data: bytes = self._aead.decrypt(nonce, ciphertext, header)
        except Exception:  # cryptography's InvalidTag
            raise SealError("a sealed record does not open (changed, replayed or out of order)") from None
        self._n += 1
        return data
