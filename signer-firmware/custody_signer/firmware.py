"""Firmware images for the reference signer: a manifest signed by k of n ed25519 release keys.

An image is `MAGIC`, the length of the manifest, the manifest (canonical JSON: hardware model, version,
security epoch, payload SHA-256 and size, which key set signed it), its signatures, then the payload.
Building is reproducible: the same payload and fields give the same bytes. A device installs an image
only with enough distinct valid signatures from its trusted keys, for its own hardware, with a
matching hash, a higher version and an epoch not below its anti-rollback counter. Test keys (derived
from public seeds, as Jade's "fakeprod" keys) are marked as such and refused by a production device.
"""
from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass

import nacl.exceptions
import nacl.signing

MAGIC = b"CUSTODY-SIGNER-FW\x01"
DOMAIN = b"custody-signer firmware manifest v1\n"     # signatures cover this prefix and the manifest
TEST_KEY_SEED = "custody-signer TEST release key {}"   # public: anyone can sign with these


class FirmwareError(ValueError):
    """An image refused; the message names the check it failed."""


@dataclass(frozen=True)
class Manifest:
    model: str
    version: tuple[int, int, int]
    epoch: int
    payload_sha256: str
    payload_size: int
    key_set: str                     # "test" or "production"

    def canonical(self) -> bytes:
        return json.dumps({"model": self.model, "version": version_text(self.version), "epoch": self.epoch,
                           "payload_sha256": self.payload_sha256, "payload_size": self.payload_size,
                           "key_set": self.key_set}, sort_keys=True, separators=(",", ":")).encode()


def version_text(version: tuple[int, int, int]) -> str:
    return ".".join(map(str, version))


def parse_version(text: str) -> tuple[int, int, int]:
    parts = text.split(".")
    if len(parts) != 3 or not all(p.isdigit() and len(p) <= 6 for p in parts):
        raise FirmwareError(f"version {text!r} is not MAJOR.MINOR.PATCH")
    return tuple(int(p) for p in parts)        # type: ignore[return-value]


def test_release_keys(count: int = 3) -> list[nacl.signing.SigningKey]:
    """The public test keys: for CI, simulators and demos, never for a production device."""
    return [nacl.signing.SigningKey(hashlib.sha256(TEST_KEY_SEED.format(n).encode()).digest()) for n in range(count)]


def test_release_public_keys(count: int = 3) -> set[str]:
    return {k.verify_key.encode().hex() for k in test_release_keys(count)}


def build_image(payload: bytes, *, model: str, version: str, epoch: int, key_set: str = "test",
                signers: list[nacl.signing.SigningKey] = ()) -> bytes:
    """An image of `payload`, signed by each of `signers` (more can be added with `add_signature`)."""
    if key_set not in ("test", "production"):
        raise FirmwareError("key_set is 'test' or 'production'")
    if not model or not 0 <= epoch < 2**32:
        raise FirmwareError("an image names its hardware model and an epoch of 0..2^32-1")
    manifest = Manifest(model, parse_version(version), epoch, hashlib.sha256(payload).hexdigest(), len(payload), key_set)
    image = _pack(manifest, [], payload)
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
    return _pack(manifest, sorted(signatures.items()), payload)


def _pack(manifest: Manifest, signatures: list[tuple[str, str]], payload: bytes) -> bytes:
    header = json.dumps({"manifest": json.loads(manifest.canonical()),
                         "signatures": [{"key": k, "sig": s} for k, s in signatures]},
                        sort_keys=True, separators=(",", ":")).encode()
    return MAGIC + struct.pack(">I", len(header)) + header + payload


def read_image(image: bytes) -> tuple[Manifest, list[tuple[str, str]], bytes]:
    """Parse without trusting anything: the manifest, the (key, signature) pairs and the payload."""
    if not image.startswith(MAGIC) or len(image) < len(MAGIC) + 4:
        raise FirmwareError("not a custody-signer firmware image")
    (size,) = struct.unpack(">I", image[len(MAGIC):len(MAGIC) + 4])
    start = len(MAGIC) + 4
    if start + size > len(image):
        raise FirmwareError("the image is truncated")
    try:
        header = json.loads(image[start:start + size])
        fields = header["manifest"]
        manifest = Manifest(str(fields["model"]), parse_version(fields["version"]), int(fields["epoch"]),
                            str(fields["payload_sha256"]), int(fields["payload_size"]), str(fields["key_set"]))
        signatures = [(str(s["key"]), str(s["sig"])) for s in header["signatures"]]
    except (ValueError, KeyError, TypeError) as e:
        raise FirmwareError(f"the image's manifest is malformed ({e})") from None
    return manifest, signatures, image[start + size:]


def verify_image(image: bytes, *, trusted_keys: set[str], threshold: int, model: str,
                 installed_version: tuple[int, int, int], epoch_counter: int, production: bool) -> Manifest:
    """Every check a device makes before installing; FirmwareError names the first that fails."""
    manifest, signatures, payload = read_image(image)
    if production and manifest.key_set != "production":
        raise FirmwareError("a production device refuses images built for test keys")
    valid = set()
    for key, signature in signatures:
        if key not in trusted_keys:
            continue
        try:
            nacl.signing.VerifyKey(bytes.fromhex(key)).verify(DOMAIN + manifest.canonical(), bytes.fromhex(signature))
        except (nacl.exceptions.BadSignatureError, ValueError):
            raise FirmwareError(f"release key {key[:16]}… did not sign this manifest (bad signature)") from None
        valid.add(key)
    if production and valid & test_release_public_keys(10):
        raise FirmwareError("a production device refuses signatures by test keys")
    if len(valid) < threshold:
        raise FirmwareError(f"{len(valid)} valid release signature(s) from distinct trusted keys; {threshold} needed")
    if manifest.model != model:
        raise FirmwareError(f"the image is for hardware {manifest.model!r}, this device is {model!r}")
    if len(payload) != manifest.payload_size or hashlib.sha256(payload).hexdigest() != manifest.payload_sha256:
        raise FirmwareError("the payload does not match the signed hash")
    if manifest.version <= installed_version:
        raise FirmwareError(f"version {version_text(manifest.version)} is not newer than the installed "
                            f"{version_text(installed_version)} (no downgrades or reinstalls)")
    if manifest.epoch < epoch_counter:
        raise FirmwareError(f"security epoch {manifest.epoch} is below the device's anti-rollback counter {epoch_counter}")
    return manifest
