"""The reference signer's firmware images: reproducible builds, k-of-n ed25519 release signatures,
and every refusal a device makes before installing (issue 6, item 3: images; install slots follow)."""
from __future__ import annotations

import hashlib

import nacl.signing
import pytest

from custody_signer import firmware as fw

PAYLOAD = b"reference signer firmware 1.4.0\n" * 1000
KEYS = fw.test_release_keys(3)
TRUSTED = {k.verify_key.encode().hex() for k in KEYS}
DEVICE = {"trusted_keys": TRUSTED, "threshold": 2, "model": "custody-ref-1", "installed_version": (1, 3, 2),
          "epoch_counter": 2, "production": False}


def image(**overrides) -> bytes:
    fields = {"model": "custody-ref-1", "version": "1.4.0", "epoch": 2, "signers": KEYS[:2], **overrides}
    return fw.build_image(overrides.pop("payload", PAYLOAD), **{k: v for k, v in fields.items() if k != "payload"})


def test_builds_are_reproducible_and_verify():
    first, second = image(), image(signers=[KEYS[1], KEYS[0]])      # signing order does not matter
    assert first == second
    manifest = fw.verify_image(first, **DEVICE)
    assert manifest.version == (1, 4, 0) and manifest.payload_sha256 == hashlib.sha256(PAYLOAD).hexdigest()
    assert fw.read_image(first)[2] == PAYLOAD


@pytest.mark.parametrize("make, device, reason", [
    (lambda: image(signers=KEYS[:1]), {}, "1 valid release signature"),
    (lambda: image(signers=[KEYS[0], KEYS[0]]), {}, "1 valid release signature"),                   # same key twice
    (lambda: image(signers=[KEYS[0], nacl.signing.SigningKey(b"\x07" * 32)]), {}, "1 valid release signature"),
    (lambda: image(model="other-hw"), {}, "for hardware 'other-hw'"),
    (lambda: image(version="1.3.2"), {}, "not newer than the installed 1.3.2"),
    (lambda: image(version="1.2.9"), {}, "no downgrades"),
    (lambda: image(epoch=1), {}, "below the device's anti-rollback counter 2"),
    (lambda: image(), {"production": True}, "refuses images built for test keys"),
    (lambda: image(key_set="production"), {"production": True}, "refuses signatures by test keys"),
])
def test_refusals(make, device, reason):
    with pytest.raises(fw.FirmwareError, match=reason):
        fw.verify_image(make(), **{**DEVICE, **device})


def test_tampered_images_are_refused():
    good = image()
    manifest, signatures, payload = fw.read_image(good)
    with pytest.raises(fw.FirmwareError, match="does not match the signed hash"):
        fw.verify_image(good[:-1] + bytes([good[-1] ^ 1]), **DEVICE)                  # payload changed
    forged = good.replace(b'"version":"1.4.0"', b'"version":"9.4.0"')                 # manifest changed
    with pytest.raises(fw.FirmwareError, match="bad signature"):
        fw.verify_image(forged, **DEVICE)
    for broken, reason in [(b"MZ" + good, "not a custody-signer firmware image"),
                           (good[:len(fw.MAGIC) + 10], "truncated")]:
        with pytest.raises(fw.FirmwareError, match=reason):
            fw.verify_image(broken, **DEVICE)


def test_a_production_release_with_production_keys():
    release = [nacl.signing.SigningKey(hashlib.sha256(f"a vault's release key {n}".encode()).digest()) for n in range(4)]
    trusted = {k.verify_key.encode().hex() for k in release}
    built = fw.build_image(PAYLOAD, model="custody-ref-1", version="2.0.0", epoch=3, key_set="production")
    for key in release[1:3]:
        built = fw.add_signature(built, key)                  # two release managers sign independently
    manifest = fw.verify_image(built, trusted_keys=trusted, threshold=2, model="custody-ref-1",
                               installed_version=(1, 4, 0), epoch_counter=2, production=True)
    assert manifest.epoch == 3 and manifest.key_set == "production"
    with pytest.raises(fw.FirmwareError, match=r"2 valid release signature\(s\) from distinct trusted keys; 3 needed"):
        fw.verify_image(built, trusted_keys=trusted, threshold=3, model="custody-ref-1",
                        installed_version=(1, 4, 0), epoch_counter=2, production=True)
