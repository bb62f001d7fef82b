"""The reference signer's firmware images: reproducible builds, k-of-n ed25519 release signatures,
and every refusal a device makes before installing (issue 6, item 3: images; install slots follow)."""
from __future__ import annotations

import hashlib

import nacl.signing
import pytest

from custody_signer import firmware as fw, protocol
from custody_signer.protocol import MAGIC

PAYLOAD = b"reference signer firmware 1.4.0\n" * 1000
KEYS = protocol.test_release_keys(3)
TRUSTED = {k.verify_key.encode().hex() for k in KEYS}
DEVICE = {"trusted_keys": TRUSTED, "threshold": 2, "model": "custody-ref-1", "installed_version": (1, 3, 2),
          "epoch_counter": 2, "production": False}


def image(**overrides) -> bytes:
    fields = {"model": "custody-ref-1", "version": "1.4.0", "epoch": 2, "signers": KEYS[:2], **overrides}
    return fw.build_image(overrides.pop("payload", PAYLOAD), **{k: v for k, v in fields.items() if k != "payload"})


def test_builds_are_reproducible_and_verify():
    first, second = image(), image(signers=[KEYS[1], KEYS[0]])      # signing order does not matter
    assert first == second
    manifest = protocol.verify_image(first, **DEVICE)
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
        protocol.verify_image(make(), **{**DEVICE, **device})


def test_tampered_images_are_refused():
    good = image()
    manifest, signatures, payload = fw.read_image(good)
    with pytest.raises(fw.FirmwareError, match="does not match the signed hash"):
        protocol.verify_image(good[:-1] + bytes([good[-1] ^ 1]), **DEVICE)                  # payload changed
    forged = good.replace(b'"version":"1.4.0"', b'"version":"9.4.0"')                 # manifest changed
    with pytest.raises(fw.FirmwareError, match="bad signature"):
        protocol.verify_image(forged, **DEVICE)
    for broken, reason in [(b"MZ" + good, "not a custody-signer firmware image"),
                           (good[:len(MAGIC) + 10], "truncated")]:
        with pytest.raises(fw.FirmwareError, match=reason):
            protocol.verify_image(broken, **DEVICE)


def test_a_production_release_with_production_keys():
    release = [nacl.signing.SigningKey(hashlib.sha256(f"a vault's release key {n}".encode()).digest()) for n in range(4)]
    trusted = {k.verify_key.encode().hex() for k in release}
    built = fw.build_image(PAYLOAD, model="custody-ref-1", version="2.0.0", epoch=3, key_set="production")
    for key in release[1:3]:
        built = fw.add_signature(built, key)                  # two release managers sign independently
    manifest = protocol.verify_image(built, trusted_keys=trusted, threshold=2, model="custody-ref-1",
                               installed_version=(1, 4, 0), epoch_counter=2, production=True)
    assert manifest.epoch == 3 and manifest.key_set == "production"
    with pytest.raises(fw.FirmwareError, match=r"2 valid release signature\(s\) from distinct trusted keys; 3 needed"):
        protocol.verify_image(built, trusted_keys=trusted, threshold=3, model="custody-ref-1",
                        installed_version=(1, 4, 0), epoch_counter=2, production=True)


# -- installing: two slots, self-test fallback, power loss at every step ---------------------------
from custody_signer.flash import Flash, PowerLoss                      # noqa: E402

STEPS = ["verified", "slot half written", "slot written", "boot record written, not yet renamed", "pending recorded",
         "pending verified at boot"]


def device(tmp_path, crash_at=None) -> Flash:
    return Flash(tmp_path / "flash", model="custody-ref-1", trusted_keys=TRUSTED, threshold=2, production=False,
                 crash_at=crash_at)


def test_install_then_boot_into_the_new_slot(tmp_path):
    flash = device(tmp_path)
    flash.provision(image(version="1.3.2", epoch=2))
    flash.install(image(version="1.4.0", epoch=3))
    assert flash.installed().version == (1, 3, 2)                   # staged, not yet running
    assert flash.boot().version == (1, 4, 0)
    assert flash.record() == {"active": "b", "pending": None, "epoch_counter": 3}
    with pytest.raises(fw.FirmwareError, match="not newer"):
        flash.install(image(version="1.3.9", epoch=3))               # no downgrade once running 1.4.0
    assert flash.boot().version == (1, 4, 0)


def test_failed_self_test_falls_back(tmp_path):
    flash = device(tmp_path)
    flash.provision(image(version="1.3.2", epoch=2))
    flash.install(image(version="1.4.0", epoch=3))
    assert flash.boot(self_test=lambda payload: False).version == (1, 3, 2)
    assert flash.record() == {"active": "a", "pending": None, "epoch_counter": 2}   # the counter did not rise


def test_a_refused_image_leaves_the_flash_as_it_was(tmp_path):
    flash = device(tmp_path)
    flash.provision(image(version="1.3.2", epoch=2))
    before = {p.name: p.read_bytes() for p in (tmp_path / "flash").iterdir()}
    for bad in (image(signers=KEYS[:1]), image(model="other-hw"), image(version="1.0.0"), image()[:-1]):
        with pytest.raises(fw.FirmwareError):
            flash.install(bad)
    assert {p.name: p.read_bytes() for p in (tmp_path / "flash").iterdir()} == before


@pytest.mark.parametrize("step", STEPS)
def test_power_loss_at_every_step_leaves_a_device_that_boots(tmp_path, step):
    def crash_at(where):
        if where == step and armed[0]:
            armed[0] = False
            raise PowerLoss(where)
    armed = [False]
    flash = device(tmp_path, crash_at)
    flash.provision(image(version="1.3.2", epoch=2))
    armed[0] = True
    try:
        flash.install(image(version="1.4.0", epoch=3))
        flash.boot()
    except PowerLoss:
        pass
    assert not armed[0], f"the install never reached step {step!r}"
    running = device(tmp_path).boot()                    # power back: the device boots a verified image
    assert running.version in ((1, 3, 2), (1, 4, 0))
    assert device(tmp_path).boot().version == running.version         # and keeps booting it
    assert device(tmp_path).record()["pending"] is None


# -- the command line --------------------------------------------------------------------------------
def signer(*args):
    import subprocess
    import sys
    return subprocess.run([sys.executable, "-m", "custody_signer.cli", *args], capture_output=True, text=True, timeout=60)


def test_build_sign_and_verify_from_the_command_line(tmp_path):
    payload = tmp_path / "firmware.bin"
    payload.write_bytes(PAYLOAD)
    release = tmp_path / "release-1.key"
    release.write_text(hashlib.sha256(b"release manager one").hexdigest())
    releases_public = nacl.signing.SigningKey(bytes.fromhex(release.read_text())).verify_key.encode().hex()
    first, second = tmp_path / "one.img", tmp_path / "two.img"
    for out in (first, second):
        built = signer("build-image", str(payload), "--model", "custody-ref-1", "--firmware-version", "1.4.0",
                       "--epoch", "2", "--test-keys", "1", "--out", str(out))
        assert built.returncode == 0, built.stderr
    assert first.read_bytes() == second.read_bytes()                        # reproducible
    verify = ["verify-image", str(first), "--threshold", "2", "--model", "custody-ref-1", "--installed-version",
              "1.3.0", "--epoch-counter", "2"] + sum((["--trusted", k] for k in sorted(TRUSTED | {releases_public})), [])
    refused = signer(*verify)
    assert refused.returncode == 1 and refused.stderr.strip() == (
        "custody-signer: error: 1 valid release signature(s) from distinct trusted keys; 2 needed")
    assert signer("sign-image", str(first), "--key-file", str(release)).returncode == 0
    accepted = signer(*verify)
    assert accepted.returncode == 0 and '"version":"1.4.0"' in accepted.stdout
    production = signer(*verify, "--production")
    assert production.returncode == 1 and "refuses images built for test keys" in production.stderr
    keys = signer("test-keys", "--count", "3").stdout.split()
    assert set(keys) == TRUSTED
