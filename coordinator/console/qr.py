"""QR codes for air-gapped signers: a PSBT as an animated sequence of BC-UR frames (crypto-psbt),
which Keystone, Passport, Jade, SeedSigner and Sparrow scan; drawn as SVG data URIs."""
from __future__ import annotations

import segno

from custody.bitcoin import ur

FRAGMENT_LENGTH = 120       # bytes per frame: dense enough to be quick, sparse enough for phone cameras


def qr_data_uri(text: str) -> str:
    # UR strings upper-cased fit QR's alphanumeric mode: smaller codes for the same data
    return segno.make(text.upper(), error="l", micro=False).svg_data_uri(scale=4, border=2)


def psbt_frames(psbt: bytes) -> list[str]:
    """One SVG data URI per frame; a single frame when the PSBT is small."""
    return [qr_data_uri(part) for part in ur.encode_parts(psbt, max_fragment_len=FRAGMENT_LENGTH)]
