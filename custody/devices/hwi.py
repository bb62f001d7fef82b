"""The coordinator's one way to a signing device: HWI (`hwilib.commands`), real hardware or reference signer.

Every call names the device by HWI type and master fingerprint, finds it with `hwilib.commands.enumerate`
and fails with one line an officer can act on when it is not connected or refuses. Registration and
firmware installs use the client's own methods where HWI 3.2 has no command (the reference signer
provides `register_policy` and `install_firmware`; a device without them is reported as unable).
"""
from __future__ import annotations

from dataclasses import dataclass

from hwilib import commands
from hwilib.common import Chain
from hwilib.errors import HWWError

from custody.errors import CustodyError

CHAINS = {"main": Chain.MAIN, "test": Chain.TEST, "testnet4": Chain.TEST, "signet": Chain.SIGNET,
          "regtest": Chain.REGTEST}


class DeviceUnavailable(CustodyError):
    """The device is not connected, or refused; the message says which and why."""


@dataclass(frozen=True)
class Connected:
    hwi_type: str
    path: str
    model: str
    fingerprint: str | None
    label: str | None


def enumerate_devices() -> list[Connected]:
    return [Connected(d["type"], d["path"], d.get("model", d["type"]), d.get("fingerprint"), d.get("label"))
            for d in commands.enumerate() if "error" not in d]


def find(fingerprint: str | None = None, *, label: str | None = None) -> Connected:
    """The connected device with this master fingerprint (or, before it has one on record, this label)."""
    for d in enumerate_devices():
        if (fingerprint and d.fingerprint == fingerprint) or (label and d.label == label):
            return d
    raise DeviceUnavailable(f"device {fingerprint or label} is not connected (HWI does not list it)")


class DeviceSession:
    """A client for one device, opened through HWI; use as a context manager. `open_device` opens the
    one an inventory row names."""

    def __init__(self, fingerprint: str | None, network: str, *, label: str | None = None):
        found = find(fingerprint, label=label)
        try:
            self.client = commands.get_client(found.hwi_type, found.path, chain=CHAINS[network])
        except HWWError as e:
            raise DeviceUnavailable(f"device {fingerprint or label}: {e.get_msg()}") from None
        self.found = found

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.client.close()

    def _do(self, what: str, fn):
        try:
            return fn()
        except HWWError as e:
            raise DeviceUnavailable(f"device {self.found.fingerprint or self.found.label} refused to {what}: "
                                    f"{e.get_msg()}") from None

    def fingerprint(self) -> str:
        return self._do("give its fingerprint", lambda: self.client.get_master_fingerprint().hex())

    def xpub(self, path: str) -> str:
        return self._do("give its key", lambda: commands.getxpub(self.client, path)["xpub"])

    def sign_message(self, message: bytes, path: str) -> str:
        return self._do("sign a message", lambda: commands.signmessage(self.client, message.decode(), path)["signature"])

    def _extension(self, name: str, what: str):
        method = getattr(self.client, name, None)
        if method is None:
            raise DeviceUnavailable(f"device type {self.found.hwi_type} cannot {what} through HWI")
        return method

    def register(self, name: str, descriptor: str) -> dict:
        register = self._extension("register_policy", "register a policy")
        return self._do("register the policy", lambda: register(name, descriptor))

    def register_watch_only(self, name: str, descriptor: str) -> dict:
        register = self._extension("register_watch_only", "register a watch-only wallet")
        return self._do("register the watch-only wallet", lambda: register(name, descriptor))

    def display_address(self, descriptor: str) -> str:
        return self._do("show the address", lambda: commands.displayaddress(self.client, desc=descriptor)["address"])

    def sign_psbt(self, psbt_b64: str) -> str:
        result = self._do("sign", lambda: commands.signtx(self.client, psbt_b64))
        return result["psbt"]

    def install_firmware(self, image: bytes) -> dict:
        install = self._extension("install_firmware", "install firmware")
        return self._do("install the firmware", lambda: install(image))

    def info(self) -> dict:
        """Model and firmware as the device reports them; a device HWI cannot ask gives its HWI model and
        no firmware version (its standing is then "unknown")."""
        describe = getattr(self.client, "device_info", None)
        if describe is None:
            return {"model": self.found.model, "firmware": {"version": None}}
        return self._do("describe itself", describe)


def open_device(device, network: str, *, fingerprint: str | None = None) -> DeviceSession:
    """The session for an inventory device (`models.SigningDevice`): found by its recorded fingerprint
    (or the one given, for hardware HWI lists without our serial), else by its serial as HWI's label."""
    return DeviceSession(device.fingerprint or fingerprint, network, label=device.serial)
