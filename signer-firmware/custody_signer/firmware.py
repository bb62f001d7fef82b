"""Building and signing firmware images for the reference signer (the release managers' side).

An image's format and the checks that decide whether it may be installed (k of n ed25519 release keys,
hardware model, payload hash, version, anti-rollback epoch) are part of the device's public protocol,
since a coordinator checks a release the same way before it keeps one: `protocol.read_image` and
`protocol.verify_image`. Here: building an image reproducibly (the same payload and fields give the same
bytes) and adding release signatures to it. How a device stages, boots and falls back is `flash`.
"""
from __future__ import annotations

import hashlib

import nacl.signing

from .protocol import DOMAIN, FirmwareError, Manifest, pack_image, parse_version, read_image
# the protocol's own, named here too for the release tools and tests that import them from this module


def build_image(payload: bytes, *, model: str, version: str, epoch: int, key_set: str = "test",
                signers: list[nacl.signing.SigningKey] = ()) -> bytes:
    """An image of `payload`, signed by each of `signers` (more can be added with `add_signature`)."""
    if key_set not in ("test", "production"):
        raise FirmwareError("key_set is 'test' or 'production'")
    if not model or not 0 <= epoch < 2**32:
        raise FirmwareError("an image names its hardware model and an epoch of 0..2^32-1")
    manifest = Manifest(model, parse_version(version), epoch, hashlib.sha256(payload).hexdigest(), len(payload), key_set)
    image = pack_image(manifest, [], payload)
    for key in signers:
        image = add_signature(image, key)
    return image


def add_signature(image: bytes, key: nacl.signing.SigningKey) -> bytes:
    """One release key's signature over the manifest; signatures are kept sorted by key, so the order
    in which release managers sign does not change the image."""
    manifest, signatures, payload = read_image(image)
    signature = key.sign(DOMAIN + manifest.canonical()).signature
    signatures = dict(signatures)
    signatures[key.verify_key.encode().hex()] = signature.hex()
    return pack_image(manifest, sorted(signatures.items()), payload)

