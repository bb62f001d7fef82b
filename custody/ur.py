"""Blockchain Commons Uniform Resources (BC-UR) for PSBTs: what air-gapped signers (Keystone, Passport,
Jade, SeedSigner, Sparrow) scan as an animated QR code.

A PSBT travels as the UR type `crypto-psbt` (bcr-2020-006): its bytes as a CBOR byte string. Small
ones fit one QR code, `ur:crypto-psbt/<bytewords>`; larger ones are split by the fountain encoder of
bcr-2020-005 into frames `ur:crypto-psbt/<seq>-<count>/<bytewords>`: the first `count` carry the
fragments in order, later ones XOR pseudo-random sets of them, so a scanner that missed some frames
still completes. Bytewords (bcr-2020-012) write bytes as two letters each, with a CRC-32 appended.
"""
from __future__ import annotations

import hashlib
import math
import zlib
from collections.abc import Iterable

PSBT_TYPE = "crypto-psbt"
MIN_FRAGMENT_LEN = 10

WORDS = (
    "able acid also apex aqua arch atom aunt away axis back bald barn belt beta bias blue body brag brew bulb buzz "
    "calm cash cats chef city claw code cola cook cost crux curl cusp cyan dark data days deli dice diet door down "
    "draw drop drum dull duty each easy echo edge epic even exam exit eyes fact fair fern figs film fish fizz flap "
    "flew flux foxy free frog fuel fund gala game gear gems gift girl glow good gray grim guru gush gyro half hang "
    "hard hawk heat help high hill holy hope horn huts iced idea idle inch inky into iris iron item jade jazz join "
    "jolt jowl judo jugs jump junk jury keep keno kept keys kick kiln king kite kiwi knob lamb lava lazy leaf legs "
    "liar limp lion list logo loud love luau luck lung main many math maze memo menu meow mild mint miss monk nail "
    "navy need news next noon note numb obey oboe omit onyx open oval owls paid part peck play plus poem pool pose "
    "puff puma purr quad quiz race ramp real redo rich road rock roof ruby ruin runs rust safe saga scar sets silk "
    "skew slot soap solo song stub surf swan taco task taxi tent tied time tiny toil tomb toys trip tuna twin ugly "
    "undo unit urge user vast very veto vial vibe view visa void vows wall wand warm wasp wave waxy webs what when "
    "whiz wolf work yank yawn yell yoga yurt zaps zero zest zinc zone zoom").split()
_MINIMAL = [w[0] + w[-1] for w in WORDS]
_FROM_MINIMAL = {m: i for i, m in enumerate(_MINIMAL)}


class URError(ValueError):
    """A UR string or set of frames that cannot be decoded; the message says why."""


# -- bytewords (bcr-2020-012), minimal style ---------------------------------------------------------
def crc32(data: bytes) -> int:
    return zlib.crc32(data) & 0xFFFFFFFF


def bytewords_encode(data: bytes) -> str:
    body = data + crc32(data).to_bytes(4, "big")
    return "".join(_MINIMAL[b] for b in body)


def bytewords_decode(text: str) -> bytes:
    text = text.lower()
    if len(text) % 2 or len(text) < 10:
        raise URError("bytewords: the text is too short or of odd length")
    try:
        body = bytes(_FROM_MINIMAL[text[i:i + 2]] for i in range(0, len(text), 2))
    except KeyError as e:
        raise URError(f"bytewords: {e.args[0]!r} is not a byteword") from None
    data, checksum = body[:-4], body[-4:]
    if crc32(data).to_bytes(4, "big") != checksum:
        raise URError("bytewords: checksum mismatch (a character was misread or changed)")
    return data


# -- minimal CBOR: unsigned integers, byte strings, arrays ------------------------------------------
def _cbor_head(major: int, value: int) -> bytes:
    if value < 24:
        return bytes([major << 5 | value])
    for info, size in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if value < 1 << (8 * size):
            return bytes([major << 5 | info]) + value.to_bytes(size, "big")
    raise URError("CBOR: integer too large")


def cbor_encode(value) -> bytes:
    if isinstance(value, bool) or not isinstance(value, (int, bytes, list)):
        raise URError(f"CBOR: cannot encode {type(value).__name__}")
    if isinstance(value, int):
        if value < 0:
            raise URError("CBOR: negative integers are not used here")
        return _cbor_head(0, value)
    if isinstance(value, bytes):
        return _cbor_head(2, len(value)) + value
    return _cbor_head(4, len(value)) + b"".join(cbor_encode(v) for v in value)


def _cbor_read(data: bytes, at: int):
    if at >= len(data):
        raise URError("CBOR: truncated")
    major, info = data[at] >> 5, data[at] & 0x1F
    at += 1
    if info < 24:
        value = info
    elif info in (24, 25, 26, 27):
        size = 1 << (info - 24)
        if at + size > len(data):
            raise URError("CBOR: truncated")
        value, at = int.from_bytes(data[at:at + size], "big"), at + size
    else:
        raise URError("CBOR: indefinite lengths and simple values are not used here")
    if major == 0:
        return value, at
    if major == 2:
        if at + value > len(data):
            raise URError("CBOR: byte string runs past the end")
        return data[at:at + value], at + value
    if major == 4:
        items = []
        for _ in range(value):
            item, at = _cbor_read(data, at)
            items.append(item)
        return items, at
    raise URError(f"CBOR: major type {major} is not used here")


def cbor_decode(data: bytes):
    value, end = _cbor_read(data, 0)
    if end != len(data):
        raise URError("CBOR: trailing bytes")
    return value


# -- the fountain code's deterministic randomness (bcr-2020-005) --------------------------------------
class Xoshiro256:
    """xoshiro256** seeded with SHA-256 of a seed, as every BC-UR implementation does."""
    MASK = (1 << 64) - 1

    def __init__(self, seed: bytes):
        digest = hashlib.sha256(seed).digest()
        self.s = [int.from_bytes(digest[i:i + 8], "big") for i in range(0, 32, 8)]

    @staticmethod
    def _rotl(x: int, k: int) -> int:
        return ((x << k) | (x >> (64 - k))) & Xoshiro256.MASK

    def next(self) -> int:
        s = self.s
        result = (self._rotl((s[1] * 5) & self.MASK, 7) * 9) & self.MASK
        t = (s[1] << 17) & self.MASK
        s[2] ^= s[0]
        s[3] ^= s[1]
        s[1] ^= s[2]
        s[0] ^= s[3]
        s[2] ^= t
        s[3] = self._rotl(s[3], 45)
        return result

    def next_double(self) -> float:
        return self.next() / float(1 << 64)

    def next_int(self, low: int, high: int) -> int:
        return int(self.next_double() * (high - low + 1)) + low

    def next_byte(self) -> int:
        return self.next_int(0, 255)


class RandomSampler:
    """Walker-Vose alias sampling, in the order the reference implementation builds its tables."""

    def __init__(self, weights: list[float]):
        total = sum(weights)
        n = len(weights)
        p = [w * n / total for w in weights]
        small = [i for i in range(n - 1, -1, -1) if p[i] < 1]
        large = [i for i in range(n - 1, -1, -1) if p[i] >= 1]
        self.probs, self.aliases = [0.0] * n, [0] * n
        while small and large:
            a, g = small.pop(), large.pop()
            self.probs[a], self.aliases[a] = p[a], g
            p[g] += p[a] - 1
            (small if p[g] < 1 else large).append(g)
        for i in large + small:
            self.probs[i] = 1.0

    def next(self, rng: Xoshiro256) -> int:
        r1, r2 = rng.next_double(), rng.next_double()
        i = int(len(self.probs) * r1)
        return i if r2 < self.probs[i] else self.aliases[i]


def choose_fragments(seq_num: int, seq_len: int, checksum: int) -> list[int]:
    """Which fragments frame `seq_num` (1-based) carries: one in order at first, then a mix."""
    if seq_num <= seq_len:
        return [seq_num - 1]
    rng = Xoshiro256(seq_num.to_bytes(4, "big") + checksum.to_bytes(4, "big"))
    degree = RandomSampler([1.0 / i for i in range(1, seq_len + 1)]).next(rng) + 1
    remaining, shuffled = list(range(seq_len)), []
    while remaining:
        shuffled.append(remaining.pop(rng.next_int(0, len(remaining) - 1)))
    return sorted(shuffled[:degree])


def fragment_length(message_len: int, max_fragment_len: int, min_fragment_len: int = MIN_FRAGMENT_LEN) -> int:
    """The smallest number of fragments no longer than `max_fragment_len`, made as even as possible."""
    for count in range(1, max(message_len // min_fragment_len, 1) + 1):
        length = math.ceil(message_len / count)
        if length <= max_fragment_len:
            return length
    return math.ceil(message_len / max(message_len // min_fragment_len, 1))


def _xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b))


# -- encoding and decoding ------------------------------------------------------------------------------
def encode_single(payload: bytes, ur_type: str = PSBT_TYPE) -> str:
    """`payload` as one UR: its CBOR byte string in bytewords."""
    return f"ur:{ur_type}/{bytewords_encode(cbor_encode(payload))}"


def encode_parts(payload: bytes, max_fragment_len: int = 100, count: int | None = None,
                 ur_type: str = PSBT_TYPE, min_fragment_len: int = MIN_FRAGMENT_LEN) -> list[str]:
    """The frames to show in turn: one UR when the payload fits a fragment, else `count` frames
    (default: twice the fragment count, the later half fountain mixes)."""
    message = cbor_encode(payload)
    length = fragment_length(len(message), max_fragment_len, min_fragment_len)
    seq_len = math.ceil(len(message) / length)
    if seq_len == 1:
        return [f"ur:{ur_type}/{bytewords_encode(message)}"]
    padded = message + bytes(seq_len * length - len(message))
    fragments = [padded[i * length:(i + 1) * length] for i in range(seq_len)]
    checksum = crc32(message)
    frames = []
    for seq_num in range(1, (count or 2 * seq_len) + 1):
        mixed = bytes(length)
        for index in choose_fragments(seq_num, seq_len, checksum):
            mixed = _xor(mixed, fragments[index])
        part = cbor_encode([seq_num, seq_len, len(message), checksum, mixed])
        frames.append(f"ur:{ur_type}/{seq_num}-{seq_len}/{bytewords_encode(part)}")
    return frames


def _split(text: str, ur_type: str) -> tuple[str | None, str]:
    text = text.strip().lower()
    if not text.startswith("ur:"):
        raise URError(f"not a UR: {text[:20]!r}")
    pieces = text[3:].split("/")
    if pieces[0] != ur_type:
        raise URError(f"expected a ur:{ur_type}, got ur:{pieces[0]}")
    if len(pieces) == 2:
        return None, pieces[1]
    if len(pieces) == 3:
        return pieces[1], pieces[2]
    raise URError("a UR has one or two '/' after its type")


def decode(parts: Iterable[str], ur_type: str = PSBT_TYPE) -> bytes:
    """The payload from a single-part UR or from enough frames of a multi-part one (any order,
    repeats and mixes welcome). Refuses anything inconsistent."""
    parts = list(parts)
    if not parts:
        raise URError("no UR frames given")
    solved: dict[int, bytes] = {}
    pending: list[tuple[set[int], bytes]] = []
    header = None
    for text in parts:
        sequence, body = _split(text, ur_type)
        if sequence is None:
            if len(parts) != 1:
                raise URError("a single-part UR cannot be combined with other frames")
            return _payload(bytewords_decode(body))
        fields = cbor_decode(bytewords_decode(body))
        if not (isinstance(fields, list) and len(fields) == 5 and all(isinstance(f, int) for f in fields[:4])
                and isinstance(fields[4], bytes)):
            raise URError("a frame's header is not [seq, count, length, checksum, data]")
        seq_num, seq_len, message_len, checksum, data = fields
        if f"{seq_num}-{seq_len}" != sequence or seq_num < 1 or seq_len < 1:
            raise URError(f"frame {sequence}: its label and its header disagree")
        if header is None:
            header = (seq_len, message_len, checksum, len(data))
        elif header != (seq_len, message_len, checksum, len(data)):
            raise URError("frames from different messages are mixed")
        indexes = set(choose_fragments(seq_num, seq_len, checksum))
        pending.append((indexes, data))
        _reduce(solved, pending)
        if len(solved) == seq_len:
            message = b"".join(solved[i] for i in range(seq_len))[:message_len]
            if crc32(message) != checksum:
                raise URError("the reassembled message fails its checksum")
            return _payload(message)
    raise URError(f"not enough frames: {len(solved)} of {header[0]} fragments recovered")


def _reduce(solved: dict[int, bytes], pending: list[tuple[set[int], bytes]]) -> None:
    """Peel known fragments out of mixed frames until nothing more resolves."""
    progress = True
    while progress:
        progress = False
        for item in list(pending):
            indexes, data = item
            for index in indexes & solved.keys():
                data = _xor(data, solved[index])
            indexes = indexes - solved.keys()
            pending.remove(item)
            if len(indexes) == 1:
                solved[indexes.pop()] = data
                progress = True
            elif indexes:
                pending.append((indexes, data))


def _payload(message: bytes) -> bytes:
    value = cbor_decode(message)
    if not isinstance(value, bytes):
        raise URError("the UR does not hold a byte string")
    return value
