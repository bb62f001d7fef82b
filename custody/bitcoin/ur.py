"""Blockchain Commons Uniform Resources (BC-UR) for PSBTs: the text that air-gapped signers
(Keystone, Passport, Jade, SeedSigner, Sparrow) scan from a static or animated QR code.

Layers, bottom up, each in its own section below:

* bytewords (bcr-2020-012, "minimal" style): every byte as two letters, a CRC-32 appended;
* CBOR (RFC 8949), only what URs need: unsigned integers, byte strings, arrays;
* the multi-part fountain code (bcr-2020-005, bcr-2024-001): the CBOR message is cut into equal
  fragments; part `n <= seqLen` carries fragment `n`, later parts XOR a pseudo-random set of them,
  chosen by xoshiro256** seeded from (n, CRC-32 of the message), so sender and scanner agree on
  the set without transmitting it and a scanner that missed frames still completes;
* the UR text: `ur:<type>/<bytewords>` or `ur:<type>/<seqNum>-<seqLen>/<bytewords>`.

A PSBT travels as UR type `crypto-psbt` (bcr-2020-006, renamed `psbt` in its 2024 revision): the
PSBT bytes as one untagged CBOR byte string. The generic functions take `ur_type` so the reference
test vectors (type `bytes`) can be checked against the same code.
"""
from __future__ import annotations

import hashlib
import math
import zlib
from collections.abc import Iterable
from dataclasses import dataclass

PSBT_TYPE = "crypto-psbt"
PSBT_MAGIC = b"psbt\xff"
_PSBT_TYPES = ("crypto-psbt", "psbt")
MIN_FRAGMENT_LEN = 10           # the reference encoders' default lower bound on a fragment
MAX_SEQ_LEN = 10_000            # decoder bound: far beyond any animated QR, short of a costly frame


class URError(ValueError):
    """A UR string or set of frames that cannot be decoded; the message says why."""


def crc32(data: bytes) -> int:
    """CRC-32 (ISO-HDLC, as zlib): the checksum of bytewords and of the whole fountain message."""
    return zlib.crc32(data) & 0xFFFFFFFF


# -- bytewords (bcr-2020-012) --------------------------------------------------------------------------
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
# The first and last letters of the 256 words are distinct pairs: the "minimal" style keeps only them.
_MINIMAL = [word[0] + word[-1] for word in WORDS]
_MINIMAL_VALUE = {pair: value for value, pair in enumerate(_MINIMAL)}


def bytewords_encode(data: bytes) -> str:
    """`data` and its big-endian CRC-32, two lowercase letters a byte."""
    return "".join(_MINIMAL[b] for b in data + crc32(data).to_bytes(4, "big"))


def bytewords_decode(text: str) -> bytes:
    """The bytes of minimal bytewords (any case), after checking the appended CRC-32."""
    text = text.lower()
    if len(text) % 2:
        raise URError("bytewords: odd number of letters")
    try:
        body = bytes(_MINIMAL_VALUE[text[i:i + 2]] for i in range(0, len(text), 2))
    except KeyError as e:
        raise URError(f"bytewords: {e.args[0]!r} is not a byteword") from None
    if len(body) < 5:
        raise URError("bytewords: too short to hold data and its checksum")
    data, checksum = body[:-4], body[-4:]
    if crc32(data).to_bytes(4, "big") != checksum:
        raise URError("bytewords: checksum mismatch (a character was misread or changed)")
    return data


# -- minimal CBOR: unsigned integers, byte strings, arrays ----------------------------------------------
_UINT, _BYTES, _ARRAY = 0, 2, 4


def _cbor_head(major: int, value: int) -> bytes:
    """A major type and its argument in the shortest form (as dCBOR requires)."""
    if value < 24:
        return bytes([major << 5 | value])
    for info, size in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if value < 1 << (8 * size):
            return bytes([major << 5 | info]) + value.to_bytes(size, "big")
    raise URError("CBOR: integer too large")


def cbor_encode(value: int | bytes | list) -> bytes:
    if isinstance(value, bool) or not isinstance(value, (int, bytes, list)):
        raise URError(f"CBOR: cannot encode {type(value).__name__}")
    if isinstance(value, int):
        if value < 0:
            raise URError("CBOR: negative integers are not used here")
        return _cbor_head(_UINT, value)
    if isinstance(value, bytes):
        return _cbor_head(_BYTES, len(value)) + value
    return _cbor_head(_ARRAY, len(value)) + b"".join(cbor_encode(item) for item in value)


def _cbor_read(data: bytes, at: int) -> tuple[int | bytes | list, int]:
    """One item starting at `at`: (value, offset after it)."""
    if at >= len(data):
        raise URError("CBOR: truncated")
    major, info = data[at] >> 5, data[at] & 0x1F
    at += 1
    if info < 24:
        value = info
    elif info <= 27:
        size = 1 << (info - 24)
        if at + size > len(data):
            raise URError("CBOR: truncated")
        value, at = int.from_bytes(data[at:at + size], "big"), at + size
    else:
        raise URError("CBOR: indefinite lengths and reserved values are not used here")
    if major == _UINT:
        return value, at
    if major == _BYTES:
        if at + value > len(data):
            raise URError("CBOR: byte string runs past the end")
        return data[at:at + value], at + value
    if major == _ARRAY:
        items = []
        for _ in range(value):
            item, at = _cbor_read(data, at)
            items.append(item)
        return items, at
    raise URError(f"CBOR: major type {major} is not used here")


def cbor_decode(data: bytes) -> int | bytes | list:
    value, end = _cbor_read(data, 0)
    if end != len(data):
        raise URError("CBOR: trailing bytes after the item")
    return value


# -- the consensus stack: deterministic randomness shared by encoder and decoder --------------------------
class Xoshiro256:
    """xoshiro256** seeded with the SHA-256 of a seed (its four big-endian 64-bit words)."""
    _MASK = (1 << 64) - 1

    def __init__(self, seed: bytes | str):
        digest = hashlib.sha256(seed.encode() if isinstance(seed, str) else seed).digest()
        self.s = [int.from_bytes(digest[i:i + 8], "big") for i in range(0, 32, 8)]

    @classmethod
    def from_crc32(cls, checksum: int) -> Xoshiro256:
        return cls(checksum.to_bytes(4, "big"))

    @staticmethod
    def _rotl(x: int, k: int) -> int:
        return ((x << k) | (x >> (64 - k))) & Xoshiro256._MASK

    def next(self) -> int:
        s, mask = self.s, self._MASK
        result = (self._rotl((s[1] * 5) & mask, 7) * 9) & mask
        t = (s[1] << 17) & mask
        s[2] ^= s[0]
        s[3] ^= s[1]
        s[1] ^= s[2]
        s[0] ^= s[3]
        s[2] ^= t
        s[3] = self._rotl(s[3], 45)
        return result

    def next_double(self) -> float:
        """In [0, 1): the 64-bit output as an IEEE-754 double, divided by 2^64, as the reference does."""
        return float(self.next()) / 18446744073709551616.0

    def next_int(self, low: int, high: int) -> int:
        """In [low, high], both included."""
        return int(self.next_double() * (high - low + 1)) + low

    def next_byte(self) -> int:
        return self.next_int(0, 255)

    def next_data(self, count: int) -> bytes:
        return bytes(self.next_byte() for _ in range(count))


class RandomSampler:
    """Walker-Vose alias method, with the reference's table order (indexes pushed in reverse)."""

    def __init__(self, weights: list[float]):
        if not weights or any(w < 0 for w in weights) or sum(weights) <= 0:
            raise ValueError("weights must be non-negative with a positive sum")
        n, total = len(weights), sum(weights)
        p = [w * n / total for w in weights]
        small = [i for i in reversed(range(n)) if p[i] < 1]
        large = [i for i in reversed(range(n)) if p[i] >= 1]
        self.probs, self.aliases = [0.0] * n, [0] * n
        while small and large:
            a, g = small.pop(), large.pop()
            self.probs[a], self.aliases[a] = p[a], g
            p[g] += p[a] - 1
            (small if p[g] < 1 else large).append(g)
        for i in large + small:           # leftovers in `small` only through rounding
            self.probs[i] = 1.0

    def next(self, rng: Xoshiro256) -> int:
        r1, r2 = rng.next_double(), rng.next_double()
        i = int(len(self.probs) * r1)
        return i if r2 < self.probs[i] else self.aliases[i]


def shuffled(items: list, rng: Xoshiro256) -> list:
    """The reference's shuffle: repeatedly take a random one of the remaining items."""
    remaining, result = list(items), []
    while remaining:
        result.append(remaining.pop(rng.next_int(0, len(remaining) - 1)))
    return result


def choose_degree(seq_len: int, rng: Xoshiro256) -> int:
    """How many fragments a mixed part XORs: d in 1..seqLen with probability proportional to 1/d."""
    return RandomSampler([1.0 / d for d in range(1, seq_len + 1)]).next(rng) + 1


def choose_fragments(seq_num: int, seq_len: int, checksum: int) -> frozenset[int]:
    """The 0-based fragment indexes that part `seq_num` (1-based) carries."""
    if seq_num <= seq_len:
        return frozenset([seq_num - 1])
    rng = Xoshiro256(seq_num.to_bytes(4, "big") + checksum.to_bytes(4, "big"))
    degree = choose_degree(seq_len, rng)
    return frozenset(shuffled(list(range(seq_len)), rng)[:degree])


def _xor(a: bytes, b: bytes) -> bytes:
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(len(a), "big")


# -- the fountain encoder ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Part:
    """One multi-part frame's content: the CBOR array [seqNum, seqLen, messageLen, checksum, data]."""
    seq_num: int
    seq_len: int
    message_len: int
    checksum: int
    data: bytes

    def cbor(self) -> bytes:
        return cbor_encode([self.seq_num, self.seq_len, self.message_len, self.checksum, self.data])

    @classmethod
    def from_cbor(cls, data: bytes) -> Part:
        fields = cbor_decode(data)
        if not (isinstance(fields, list) and len(fields) == 5
                and all(isinstance(f, int) for f in fields[:4]) and isinstance(fields[4], bytes)):
            raise URError("a frame's content is not [seqNum, seqLen, messageLen, checksum, data]")
        part = cls(*fields)
        if not (1 <= part.seq_num < 1 << 32 and 1 <= part.seq_len and part.checksum < 1 << 32 and part.data):
            raise URError("a frame's header is out of range")
        return part


def find_nominal_fragment_length(message_len: int, min_fragment_len: int, max_fragment_len: int) -> int:
    """The fragment length of the fewest fragments no longer than `max_fragment_len`, spreading the
    message evenly, never splitting below `min_fragment_len` (then the last candidate is used)."""
    if message_len < 1 or min_fragment_len < 1 or max_fragment_len < min_fragment_len:
        raise ValueError("need message_len >= 1 and 1 <= min_fragment_len <= max_fragment_len")
    fragment_len = message_len              # a message shorter than the minimum stays whole
    for fragment_count in range(1, message_len // min_fragment_len + 1):
        fragment_len = math.ceil(message_len / fragment_count)
        if fragment_len <= max_fragment_len:
            break
    return fragment_len


def partition_message(message: bytes, fragment_len: int) -> list[bytes]:
    """Fragments of `fragment_len` bytes, the last one zero-padded."""
    padded = message + bytes(-len(message) % fragment_len)
    return [padded[i:i + fragment_len] for i in range(0, len(padded), fragment_len)]


class FountainEncoder:
    """An endless stream of parts for `message`: the first `seq_len` are its fragments in order,
    the rest pseudo-random XOR mixes of them (a Luby transform code)."""

    def __init__(self, message: bytes, max_fragment_len: int, first_seq_num: int = 0,
                 min_fragment_len: int = MIN_FRAGMENT_LEN):
        if len(message) >= 1 << 32:
            raise ValueError("message too long for a 32-bit length")
        self.message_len = len(message)
        self.checksum = crc32(message)
        self.fragment_len = find_nominal_fragment_length(len(message), min_fragment_len, max_fragment_len)
        self.fragments = partition_message(message, self.fragment_len)
        self.seq_num = first_seq_num

    @property
    def seq_len(self) -> int:
        return len(self.fragments)

    @property
    def is_single_part(self) -> bool:
        return self.seq_len == 1

    def mix(self, indexes: Iterable[int]) -> bytes:
        result = bytes(self.fragment_len)
        for index in indexes:
            result = _xor(result, self.fragments[index])
        return result

    def next_part(self) -> Part:
        self.seq_num += 1
        indexes = choose_fragments(self.seq_num, self.seq_len, self.checksum)
        return Part(self.seq_num, self.seq_len, self.message_len, self.checksum, self.mix(indexes))


# -- the fountain decoder ----------------------------------------------------------------------------------
class FountainDecoder:
    """Collects parts in any order (repeats ignored) until every fragment is known.

    A part is a set of fragment indexes with the XOR of those fragments. Whenever one part's set is
    a strict subset of another's, XOR-ing it out shrinks the larger one; a set of one index is a
    recovered fragment. This is the reference decoder's reduction, done eagerly."""

    def __init__(self):
        self.expected: tuple[int, int, int, int] | None = None   # seqLen, messageLen, checksum, fragment length
        self.fragments: dict[int, bytes] = {}
        self.mixed: dict[frozenset[int], bytes] = {}
        self.message: bytes | None = None

    @property
    def is_complete(self) -> bool:
        return self.message is not None

    def receive(self, part: Part) -> None:
        self._check_consistent(part)
        indexes = choose_fragments(part.seq_num, part.seq_len, part.checksum)
        if self.is_complete:
            self._check_against_message(part, indexes)
            return
        queue = [(indexes, part.data)]
        while queue:
            indexes, data = queue.pop()
            for index in indexes & self.fragments.keys():       # take out what is already known
                data = _xor(data, self.fragments[index])
            indexes = frozenset(indexes - self.fragments.keys())
            for other, other_data in self.mixed.items():        # and any mixed part strictly inside
                if other < indexes:
                    indexes, data = indexes - other, _xor(data, other_data)
            if not indexes or indexes in self.mixed:
                continue                                       # nothing new
            if len(indexes) == 1:
                self.fragments[next(iter(indexes))] = data
            else:
                self.mixed[indexes] = data
            # The new piece may in turn reduce the mixed parts that contain it.
            for other in [o for o in self.mixed if indexes < o]:
                queue.append((other, self.mixed.pop(other)))
        self._finish_if_complete()

    def _check_consistent(self, part: Part) -> None:
        key = (part.seq_len, part.message_len, part.checksum, len(part.data))
        if self.expected is None:
            if part.seq_len > MAX_SEQ_LEN:
                raise URError(f"{part.seq_len} fragments: more than the {MAX_SEQ_LEN} accepted")
            if part.seq_len != math.ceil(part.message_len / len(part.data)):
                raise URError(f"inconsistent lengths: {part.seq_len} fragments of {len(part.data)} bytes "
                              f"do not make a {part.message_len}-byte message")
            self.expected = key
        elif key != self.expected:
            raise URError("frames from different messages are mixed: sequence length, message length, "
                          "checksum or fragment length differ")

    def _finish_if_complete(self) -> None:
        seq_len, message_len, checksum, _ = self.expected
        if len(self.fragments) < seq_len:
            return
        message = b"".join(self.fragments[i] for i in range(seq_len))[:message_len]
        if crc32(message) != checksum:
            raise URError("the reassembled message fails its CRC-32 checksum")
        self.message = message

    def _check_against_message(self, part: Part, indexes: frozenset[int]) -> None:
        """A frame that arrives after completion must still be a true mix of the message."""
        expected = bytes(len(part.data))
        for index in indexes:
            expected = _xor(expected, self.fragments[index])
        if part.data != expected:
            raise URError(f"frame {part.seq_num}-{part.seq_len} does not match the recovered message")


# -- UR text -------------------------------------------------------------------------------------------------
def _check_payload(payload: bytes, ur_type: str) -> None:
    if not isinstance(payload, (bytes, bytearray)):
        raise URError(f"the payload must be bytes, not {type(payload).__name__}")
    if ur_type in _PSBT_TYPES and not bytes(payload).startswith(PSBT_MAGIC):
        raise URError(f"ur:{ur_type} must hold binary PSBT bytes (starting 'psbt\\xff'), not base64 or other data")


def _check_type(ur_type: str) -> None:
    if not ur_type or any(not (c.isascii() and (c.islower() or c.isdigit() or c == "-")) for c in ur_type):
        raise URError(f"{ur_type!r} is not a UR type (lowercase letters, digits and '-')")


def encode_single(payload: bytes, ur_type: str = PSBT_TYPE) -> str:
    """`payload` as one UR, `ur:<type>/<bytewords of its CBOR byte string>`, in lowercase (callers
    may upper-case it for the QR alphanumeric mode)."""
    _check_type(ur_type)
    _check_payload(payload, ur_type)
    return f"ur:{ur_type}/{bytewords_encode(cbor_encode(bytes(payload)))}"


def encode_parts(payload: bytes, max_fragment_len: int = 100, count: int | None = None,
                 ur_type: str = PSBT_TYPE, min_fragment_len: int = MIN_FRAGMENT_LEN) -> list[str]:
    """The frames to show in turn: `[encode_single(payload)]` when the CBOR message fits one fragment,
    else frames 1..`count` (default twice the fragment count: every fragment once, then as many mixes)."""
    _check_type(ur_type)
    _check_payload(payload, ur_type)
    encoder = FountainEncoder(cbor_encode(bytes(payload)), max_fragment_len, min_fragment_len=min_fragment_len)
    if encoder.is_single_part:
        return [encode_single(payload, ur_type)]
    if count is None:
        count = 2 * encoder.seq_len
    if count < 1:
        raise ValueError("count must be at least 1")
    return [encode_part(encoder.next_part(), ur_type) for _ in range(count)]


def encode_part(part: Part, ur_type: str = PSBT_TYPE) -> str:
    """One multi-part frame: `ur:<type>/<seqNum>-<seqLen>/<bytewords of the part's CBOR>`."""
    return f"ur:{ur_type}/{part.seq_num}-{part.seq_len}/{bytewords_encode(part.cbor())}"


def _parse(text: str) -> tuple[str, str | None, str]:
    """(type, "seqNum-seqLen" or None, bytewords) of a UR string, any case."""
    if not isinstance(text, str):
        raise URError(f"a UR is text, not {type(text).__name__}")
    text = text.strip().lower()
    if not text.startswith("ur:"):
        raise URError(f"not a UR (no 'ur:' scheme): {text[:24]!r}")
    components = text[3:].split("/")
    if len(components) not in (2, 3):
        raise URError("a UR is ur:<type>/<body> or ur:<type>/<seqNum>-<seqLen>/<body>")
    _check_type(components[0])
    if len(components) == 2:
        return components[0], None, components[1]
    return components[0], components[1], components[2]


def _parse_sequence(sequence: str) -> tuple[int, int]:
    pieces = sequence.split("-")
    if len(pieces) != 2 or not all(p.isascii() and p.isdigit() and int(p) >= 1 for p in pieces):
        raise URError(f"bad sequence component {sequence!r}: expected <seqNum>-<seqLen>, both from 1")
    return int(pieces[0]), int(pieces[1])


class URDecoder:
    """Takes scanned UR strings one by one (e.g. from a camera) until the payload is known."""

    def __init__(self, ur_type: str = PSBT_TYPE):
        _check_type(ur_type)
        self.ur_type = ur_type
        self.fountain = FountainDecoder()
        self.single: bytes | None = None
        self.seen_multipart = False

    @property
    def is_complete(self) -> bool:
        return self.single is not None or self.fountain.is_complete

    def receive(self, text: str) -> bool:
        """Checks and records one frame; True once the payload is complete."""
        ur_type, sequence, body = _parse(text)
        if ur_type != self.ur_type:
            raise URError(f"wrong UR type: expected ur:{self.ur_type}, got ur:{ur_type}")
        message = bytewords_decode(body)
        if sequence is None:
            if self.seen_multipart or (self.single is not None and message != self.single):
                raise URError("a single-part UR cannot be combined with other frames")
            self._payload(message)                  # fails now on a bad payload
            self.single = message
            return True
        if self.single is not None:
            raise URError("a single-part UR cannot be combined with other frames")
        self.seen_multipart = True
        part = Part.from_cbor(message)
        if _parse_sequence(sequence) != (part.seq_num, part.seq_len):
            raise URError(f"frame {sequence}: its label and its content disagree "
                          f"({part.seq_num}-{part.seq_len})")
        self.fountain.receive(part)
        return self.is_complete

    @property
    def progress(self) -> tuple[int, int]:
        """(fragments recovered, fragments needed); (0, 0) before the first multi-part frame."""
        if self.single is not None:
            return 1, 1
        if self.fountain.expected is None:
            return 0, 0
        return len(self.fountain.fragments), self.fountain.expected[0]

    def result(self) -> bytes:
        if self.single is not None:
            return self._payload(self.single)
        if not self.fountain.is_complete:
            done, needed = self.progress
            raise URError(f"not enough frames: {done} of {needed} fragments recovered" if needed
                          else "no UR frames given")
        return self._payload(self.fountain.message)

    def _payload(self, message: bytes) -> bytes:
        value = cbor_decode(message)
        if not isinstance(value, bytes):
            raise URError(f"ur:{self.ur_type} must hold a CBOR byte string")
        _check_payload(value, self.ur_type)
        return value


def decode(parts: Iterable[str], ur_type: str = PSBT_TYPE) -> bytes:
    """The payload of a single-part UR, or of any sufficient set of multi-part frames (pure or mixed,
    any order, repeats welcome). Every frame given is checked, even past the point of completion."""
    decoder = URDecoder(ur_type)
    if isinstance(parts, str):
        parts = [parts]
    for text in parts:
        decoder.receive(text)
    return decoder.result()
