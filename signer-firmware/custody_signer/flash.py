"""The signer's flash: two firmware slots and a boot record in a state directory, installed so that a
power loss at any step leaves a device that boots.

Every file here is written by `durable.atomic_write` (temporary file, fsync, rename, fsync of the
directory). An install verifies the image, writes it to the inactive slot, reads the slot back from the
disk and verifies those bytes (signatures and hash), and only then marks that slot pending in the boot
record: the record never names a slot whose image is not complete, durable and verified. At boot a
pending slot is tried: its image must verify again and pass its self-test; then it becomes active and the
anti-rollback counter rises to its epoch. Otherwise the device falls back to the slot it ran before. The
active slot is never written, so a cut at any point leaves the old firmware or the new, never none.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from . import faults
from .durable import atomic_write, make_dirs, read_back, remove_temporaries
from .protocol import FirmwareError, Manifest, read_image, verify_image

__all__ = ["Flash", "PowerLoss", "atomic_write", "SLOTS"]

SLOTS = ("a", "b")


class PowerLoss(Exception):
    """Raised by a test's `crash_at` hook: the device lost power at that step."""


class Flash:
    def __init__(self, state: Path, *, model: str, trusted_keys: set[str], threshold: int, production: bool,
                 crash_at: Callable[[str], None] | None = None):
        self.state, self.model = Path(state), model
        self.trusted_keys, self.threshold, self.production = trusted_keys, threshold, production
        self.crash_at = crash_at or (lambda step: None)
        make_dirs(self.state)

    def _step(self, name: str) -> None:
        faults.reached(name)
        self.crash_at(name)

    def _write(self, path: Path, data: bytes | str, older_names: dict[str, str]) -> None:
        """Durably replace a file of the flash; `crash_at` hears each write point (`boot.json:synced`...) and
        the names of the steps it had before writes were durable (`slot half written`...)."""
        def crash_at(point: str) -> None:
            self.crash_at(point)
            older = older_names.get(point.split(":", 1)[1])
            if older:
                self.crash_at(older)
        atomic_write(path, data, crash_at=crash_at)

    # -- the boot record -----------------------------------------------------------------------------
    def record(self) -> dict:
        path = self.state / "boot.json"
        if not path.exists():
            return {"active": None, "pending": None, "epoch_counter": 0}
        try:
            record = json.loads(path.read_text())
            if record["active"] not in SLOTS or record.get("pending") not in (None, *SLOTS):
                raise ValueError("no such slot")
        except (ValueError, KeyError, TypeError) as e:
            raise FirmwareError(f"the boot record is damaged ({e})") from None
        return record

    def _write_record(self, record: dict) -> None:
        self._write(self.state / "boot.json", json.dumps(record, sort_keys=True),
                    {"synced": "boot record written, not yet renamed"})

    def _slot(self, name: str) -> Path:
        return self.state / f"slot_{name}.img"

    def _write_slot(self, name: str, image: bytes, *, installed_version: tuple[int, int, int],
                    epoch_counter: int) -> Manifest:
        """Write a slot durably, then verify what the disk holds: the same bytes, a valid signed image."""
        self._write(self._slot(name), image, {"partly written": "slot half written"})
        stored = read_back(self._slot(name))
        if stored != image:
            raise FirmwareError(f"slot {name} did not read back as written")
        return verify_image(stored, trusted_keys=self.trusted_keys, threshold=self.threshold, model=self.model,
                            installed_version=installed_version, epoch_counter=epoch_counter,
                            production=self.production)

    # -- factory, install, boot ------------------------------------------------------------------------
    def provision(self, image: bytes) -> Manifest:
        """The factory's first image (verified as any other, against version 0.0.0). The boot record is
        written last: until it is, the device has no firmware and a restarted first start provisions again."""
        verify_image(image, trusted_keys=self.trusted_keys, threshold=self.threshold, model=self.model,
                     installed_version=(0, 0, 0), epoch_counter=0, production=self.production)
        remove_temporaries(self.state)
        manifest = self._write_slot("a", image, installed_version=(0, 0, 0), epoch_counter=0)
        self._step("slot written")
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
        checks = dict(installed_version=current.version, epoch_counter=record["epoch_counter"])
        verify_image(image, trusted_keys=self.trusted_keys, threshold=self.threshold, model=self.model,
                     production=self.production, **checks)
        target = SLOTS[1 - SLOTS.index(record["active"])]
        self._step("verified")
        if record.get("pending") == target:       # staged before and not booted: unstage it before rewriting
            record = {**record, "pending": None}
            self._write_record(record)
        remove_temporaries(self.state)
        manifest = self._write_slot(target, image, **checks)
        self._step("slot written")
        self._write_record({**record, "pending": target})
        self._step("pending recorded")
        return manifest

    def boot(self, self_test: Callable[[bytes], bool] = lambda payload: True) -> Manifest:
        """Start the device: try a pending slot once, else run the active one."""
        record = self.record()
        pending = record.get("pending")
        if pending:
            remove_temporaries(self.state)                # what an interrupted install left unrenamed
            try:
                image = read_back(self._slot(pending))
                manifest = verify_image(image, trusted_keys=self.trusted_keys, threshold=self.threshold,
                                        model=self.model, installed_version=self.installed().version,
                                        epoch_counter=record["epoch_counter"], production=self.production)
                if not self_test(read_image(image)[2]):
                    raise FirmwareError("the new firmware failed its self-test")
                self._step("pending verified at boot")
                record = {"active": pending, "pending": None,
                          "epoch_counter": max(record["epoch_counter"], manifest.epoch)}
            except (FirmwareError, OSError):
                record = {**record, "pending": None}          # fall back to the slot that ran before
            self._write_record(record)
        # the running image is checked at every boot too (signatures, hardware, hash)
        if record["active"] is None:
            raise FirmwareError("the device has no firmware")
        return verify_image(read_back(self._slot(record["active"])), trusted_keys=self.trusted_keys,
                            threshold=self.threshold, model=self.model, installed_version=(0, 0, 0),
                            epoch_counter=0, production=self.production)
