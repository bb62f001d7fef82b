"""BIP-127 commitments: the standard form and each variant published tools use are recognised and named;
a commitment to another message is none of them."""
from __future__ import annotations

import hashlib

import pytest

from audit import commitment

MESSAGE = b"custodian: Example Treasury; audit 2026-Q4; nonce 8f3a; block 00000000000000000001a2b3"


def test_the_standard_commitment_is_sha256_of_the_prefixed_message():
    assert commitment.commitment(MESSAGE) == hashlib.sha256(b"Proof-of-Reserves: " + MESSAGE).digest()
    assert commitment.detect(commitment.commitment(MESSAGE), MESSAGE) == commitment.STANDARD


@pytest.mark.parametrize("name, digest", [
    ("sha256 without prefix", hashlib.sha256(MESSAGE).digest()),
    ("double sha256 with prefix",
     hashlib.sha256(hashlib.sha256(b"Proof-of-Reserves: " + MESSAGE).digest()).digest()),
    ("double sha256 without prefix", hashlib.sha256(hashlib.sha256(MESSAGE).digest()).digest()),
    ("sha256 with prefix, byte-reversed", hashlib.sha256(b"Proof-of-Reserves: " + MESSAGE).digest()[::-1]),
])
def test_published_variants_are_named(name, digest):
    assert commitment.detect(digest, MESSAGE) == name


def test_a_commitment_to_another_message_is_no_variant():
    other = commitment.commitment(MESSAGE.replace(b"2026-Q4", b"2026-Q3"))
    assert commitment.detect(other, MESSAGE) is None
    assert len(set(commitment.variants(MESSAGE).values())) == 8
