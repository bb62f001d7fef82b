"""The signer's flash: two firmware slots and a boot record in a state directory, installed so that a
power loss at any step leaves a device that boots.

An install verifies the image, writes it to the inactive slot, then marks that slot pending in the
boot record (written to a temporary file and renamed: the record is always the old or the new one,
never half of each). At boot a pending slot is tried: its image must verify against the hash it was
signed with and pass its self-test; then it becomes active and the anti-rollback counter rises to its
epoch. Otherwise the device falls back to the slot it ran before.
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

from .firmware import FirmwareError, Manifest, read_image, verify_image

SLOTS = ("a", "b")


def atomic_write(path: Path, text: str) -> None:
    """Replace a file whole: a reader (or a restart) sees the old content or the new, never half."""
    temporary = path.with_suffix(path.suffix + ".new")
    temporary.write_text(text)
    os.replace(temporary, path)


class PowerLoss(Exception):
    """Raised by a test's `crash_at` hook: the device lost power at that step."""


class Flash:
    def __init__(self, state: Path, *, model: str, trusted_keys: set[str], threshold: int, production: bool,
                 crash_at: Callable[[str], None] | None = None):
        self.state, self.model = Path(state), model
        self.trusted_keys, self.threshold, self.production = trusted_keys, threshold, production
        self.crash_at = crash_at or (lambda step: None)
        self.state.mkdir(parents=True, exist_ok=True)

    # -- the boot record -----------------------------------------------------------------------------
    def record(self) -> dict:
        path = self.state / "boot.json"
        if not path.exists():
            return {"active": None, "pending": None, "epoch_counter": 0}
        return json.loads(path.read_text())

    def _write_record(self, record: dict) -> None:
        temporary = self.state / "boot.json.new"
        temporary.write_text(json.dumps(record, sort_keys=True))
        self.crash_at("boot record written, not yet renamed")
        os.replace(temporary, self.state / "boot.json")

    def _slot(self, name: str) -> Path:
        return self.state / f"slot_{name}.img"

    # -- factory, install, boot ------------------------------------------------------------------------
    def provision(self, image: bytes) -> Manifest:
        """The factory's first image (verified as any other, against version 0.0.0)."""
        manifest = verify_image(image, trusted_keys=self.trusted_keys, threshold=self.threshold, model=self.model,
                                installed_version=(0, 0, 0), epoch_counter=0, production=self.production)
        self._slot("a").write_bytes(image)
        self._write_record({"active": "a", "pending": None, "epoch_counter": manifest.epoch})
        return manifest

    def installed(self) -> Manifest:
        record = self.record()
        if record["active"] is None:
            raise FirmwareError("the device has no firmware")
        return read_image(self._slot(record["active"]).read_bytes())[0]

    def install(self, image: bytes) -> Manifest:
        """Stage `image` for the next boot; refuses it (and leaves the flash unchanged) if it fails a check."""
        record = self.record()
        current = self.installed()
        manifest = verify_image(image, trusted_keys=self.trusted_keys, threshold=self.threshold, model=self.model,
                                installed_version=current.version, epoch_counter=record["epoch_counter"],
                                production=self.production)
        target = SLOTS[1 - SLOTS.index(record["active"])]
        self.crash_at("verified")
        with open(self._slot(target), "wb") as slot:
            half = len(image) // 2
            slot.write(image[:half])
            slot.flush()
            self.crash_at("slot half written")
            slot.write(image[half:])
        self.crash_at("slot written")
        self._write_record({**record, "pending": target})
        self.crash_at("pending recorded")
        return manifest

    def boot(self, self_test: Callable[[bytes], bool] = lambda payload: True) -> Manifest:
        """Start the device: try a pending slot once, else run the active one."""
        record = self.record()
        pending = record.get("pending")
        if pending:
            try:
                image = self._slot(pending).read_bytes()
                manifest = verify_image(image, trusted_keys=self.trusted_keys, threshold=self.threshold,
                                        model=self.model, installed_version=self.installed().version,
                                        epoch_counter=record["epoch_counter"], production=self.production)
                if not self_test(read_image(image)[2]):
                    raise FirmwareError("the new firmware failed its self-test")
                self.crash_at("pending verified at boot")
                record = {"active": pending, "pending": None,
                          "epoch_counter": max(record["epoch_counter"], manifest.epoch)}
            except (FirmwareError, OSError):
                record = {**record, "pending": None}          # fall back to the slot that ran before
            self._write_record(record)
        # the running image is checked at every boot too (signatures, hardware, hash)
        return verify_image(self._slot(record["active"]).read_bytes(), trusted_keys=self.trusted_keys,
                            threshold=self.threshold, model=self.model, installed_version=(0, 0, 0),
                            epoch_counter=0, production=self.production)
