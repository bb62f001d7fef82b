"""BC-UR for PSBTs (custody/ur.py) against the published vectors of Blockchain Commons' reference
implementation (URKit / bc-ur): bytewords, the seeded xoshiro256**, CRC-32, and the first and tenth
frames of their multi-part test message; then real PSBTs through partial, shuffled sets of frames."""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from custody import ur

VECTORS = Path(__file__).with_name("vectors")


def make_message(length: int, seed: str = "Wolf") -> bytes:
    """The reference tests' message: bytes drawn from xoshiro256** seeded with SHA-256(seed)."""
    rng = ur.Xoshiro256(seed.encode())
    return bytes(rng.next_byte() for _ in range(length))


def test_bytewords_vector():
    assert ur.bytewords_encode(bytes([0x00, 0x01, 0x02, 0x80, 0xFF])) == "aeadaolazmjendeoti"
    assert ur.bytewords_decode("AEADAOLAZMJENDEOTI") == bytes([0x00, 0x01, 0x02, 0x80, 0xFF])
    assert len(set(ur.WORDS)) == 256 and len({w[0] + w[-1] for w in ur.WORDS}) == 256


def test_xoshiro_and_crc32_vectors():
    rng = ur.Xoshiro256(b"Wolf")
    assert [rng.next() % 100 for _ in range(10)] == [42, 81, 85, 8, 82, 84, 76, 73, 70, 88]
    assert ur.crc32(b"Hello, world!") == 0xEBE6C6E6 and ur.crc32(b"Wolf") == 0x598C84DC


def test_multipart_frames_match_the_reference_encoder():
    frames = ur.encode_parts(make_message(256), max_fragment_len=30, count=20, ur_type="bytes")
    assert frames[0] == ("ur:bytes/1-9/lpadascfadaxcywenbpljkhdcahkadaemejtswhhylkepmykhhtsytsnoyoyaxaedsuttydmmhhp"
                         "ktpmsrjtdkgslpgh")
    assert frames[9] == ("ur:bytes/10-9/lpbkascfadaxcywenbpljkhdcahkadaemejtswhhylkepmykhhtsytsnoyoyaxaedsuttydmmhhp"
                         "ktpmsrjtwdkiplzs")
    assert [f.split("/")[1] for f in frames[:3]] == ["1-9", "2-9", "3-9"]
    assert ur.decode(frames, ur_type="bytes") == make_message(256)


def _psbts() -> list[bytes]:
    import base64
    cases = json.loads((VECTORS / "bip174.json").read_text())
    valid = [c for c in (cases.get("valid") or cases.get("valid_psbts") or []) if isinstance(c, (str, dict))]
    out = []
    for case in valid:
        text = case if isinstance(case, str) else case.get("psbt") or case.get("base64")
        if text:
            out.append(base64.b64decode(text))
    return out


def test_real_psbts_survive_missed_frames():
    psbts = _psbts()
    assert len(psbts) >= 5
    rng = random.Random(2026)
    for psbt in psbts:
        frames = ur.encode_parts(psbt, max_fragment_len=60, count=None)
        if len(frames) == 1:
            assert frames[0].startswith("ur:crypto-psbt/") and ur.decode(frames) == psbt
            continue
        seq_len = int(frames[0].split("/")[1].split("-")[1])
        assert len(frames) == 2 * seq_len
        more = ur.encode_parts(psbt, max_fragment_len=60, count=6 * seq_len)
        assert more[:len(frames)] == frames                      # frames are a fixed sequence
        scanned = [f for f in more if rng.random() < 0.7]         # a camera that misses frames
        rng.shuffle(scanned)
        assert ur.decode(scanned + scanned[:3]) == psbt           # any order, repeats welcome


def test_single_part_when_small():
    assert ur.encode_parts(b"\x01\x02\x03") == [ur.encode_single(b"\x01\x02\x03")]
    assert ur.decode([ur.encode_single(b"psbt")]) == b"psbt"


@pytest.mark.parametrize("mutate, message", [
    (lambda f: [f[0][:-3] + ("a" if f[0][-3] != "a" else "e") + f[0][-2:]] + f[1:], "checksum|byteword"),
    (lambda f: [x.replace("ur:crypto-psbt", "ur:bytes") for x in f], "expected a ur:crypto-psbt"),
    (lambda f: f[:2], "not enough frames"),
    (lambda f: [f[0].replace("/1-", "/2-", 1)] + f[1:], "label and its header disagree"),
    (lambda f: ["https://example.com"], "not a UR"),
    (lambda f: [], "no UR frames"),
])
def test_bad_frames_are_refused(mutate, message):
    frames = ur.encode_parts(bytes(range(256)) * 2, max_fragment_len=100)
    with pytest.raises(ur.URError, match=message):
        ur.decode(mutate(frames))


def test_frames_of_two_messages_are_not_mixed():
    a = ur.encode_parts(bytes(300), max_fragment_len=100)
    b = ur.encode_parts(bytes(range(256)) + bytes(44), max_fragment_len=100)
    with pytest.raises(ur.URError, match="different messages"):
        ur.decode(a[:2] + b[2:])
