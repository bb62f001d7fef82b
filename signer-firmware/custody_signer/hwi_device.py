"""The reference signer as an HWI device (`hwilib.devices.custodysigner`, type "custodysigner").

`hwi_plugin` puts this module under `hwilib.devices`, so `hwilib.commands.enumerate/getxpub/
displayaddress/signtx/signmessage` and the `hwi` command line drive the simulator exactly as they drive
a Coldcard or a Jade. HWI 3.2 has no command to register a multisig wallet or to install firmware, so
the client adds `register_policy` (shaped like HWI's later `registerpolicy`), `register_watch_only` (a custody
policy the device holds no key in, as a destination its signing policy can require) and `install_firmware`.
Message signatures are BIP-322 "simple" signatures for the P2WPKH address of the key at the path.
"""
from __future__ import annotations

import base64
from typing import Any

from hwilib.common import AddressType, Chain
from hwilib.descriptor import MultisigDescriptor
from hwilib.errors import BadArgumentError, DeviceConnectionError, DeviceFailureError, UnavailableActionError
from hwilib.hwwclient import HardwareWalletClient
from hwilib.key import ExtendedKey
from hwilib.psbt import PSBT

from .device import DeviceError
from .simulator import call, discovery_dirs

DEVICE_TYPE = "custodysigner"
CHAIN_NETWORK = {Chain.MAIN: "main", Chain.TEST: "test", Chain.REGTEST: "regtest", Chain.SIGNET: "signet"}


class CustodysignerClient(HardwareWalletClient):
    def __init__(self, path: str, password: str | None = None, expert: bool = False, chain: Chain = Chain.MAIN):
        super().__init__(path, password, expert, chain)
        info = self._call("info")
        expected = CHAIN_NETWORK.get(chain)
        if info["network"] != expected and not (expected == "test" and info["network"] in ("regtest", "signet")):
            raise BadArgumentError(f"the device is on {info['network']}, the request is for {expected} "
                                   f"(hwi --chain {info['network']})")
        self.info = info

    def _call(self, op: str, **fields) -> Any:
        try:
            return call(self.path, {"op": op, **fields})
        except ConnectionError as e:
            raise DeviceConnectionError(str(e)) from None
        except DeviceError as e:
            raise DeviceFailureError(str(e)) from None

    # -- HWI's interface -----------------------------------------------------------------------------------
    def get_master_fingerprint(self) -> bytes:
        return bytes.fromhex(self.info["fingerprint"])

    def get_pubkey_at_path(self, bip32_path: str) -> ExtendedKey:
        return ExtendedKey.deserialize(self._call("xpub", path=bip32_path))

    def sign_tx(self, psbt: PSBT) -> PSBT:
        signed = PSBT()
        signed.deserialize(self._call("sign_psbt", psbt=psbt.serialize()))
        return signed

    def sign_message(self, message: str | bytes, bip32_path: str) -> str:
        text = message.decode() if isinstance(message, bytes) else message
        return self._call("sign_message", message=text, path=bip32_path)["signature"]

    def display_singlesig_address(self, bip32_path: str, addr_type: AddressType) -> str:
        """Only addresses of a registered single-key wallet (a fleet's payout wallet) are shown."""
        if addr_type not in (AddressType.WIT, AddressType.TAP):
            raise UnavailableActionError("this device shows native segwit (wpkh) and taproot addresses only")
        return self._call("display_path", path=bip32_path)

    def display_multisig_address(self, addr_type: AddressType, multisig: MultisigDescriptor) -> str:
        if addr_type != AddressType.WIT:
            raise UnavailableActionError("this device shows native segwit (wsh) multisig addresses only")
        paths = {p.deriv_path for p in multisig.pubkeys}
        if len(paths) != 1 or not paths.pop().count("/") == 2:
            raise BadArgumentError("every key must end in the same /branch/index")
        branch, index = (int(x) for x in multisig.pubkeys[0].deriv_path.strip("/").split("/"))
        template = ",".join(f"[{p.origin.to_string()}]{p.pubkey}/<0;1>/*" for p in multisig.pubkeys)
        descriptor = f"wsh({multisig.name}({multisig.thresh},{template}))"
        return self._call("display_address", descriptor=descriptor, branch=branch, index=index)

    def close(self) -> None:
        pass

    def can_sign_taproot(self) -> bool:
        return False

    def wipe_device(self) -> bool:
        raise UnavailableActionError("the reference signer is wiped by deleting its state directory")

    def setup_device(self, label: str = "", passphrase: str = "") -> bool:
        raise UnavailableActionError("the reference signer makes its seed on first start")

    def restore_device(self, label: str = "", word_count: int = 24) -> bool:
        raise UnavailableActionError("the reference signer does not import seeds")

    def backup_device(self, label: str = "", passphrase: str = "") -> bool:
        raise UnavailableActionError("the reference signer's seed never leaves it")

    def prompt_pin(self) -> bool:
        raise UnavailableActionError("the reference signer has no PIN")

    def send_pin(self, pin: str) -> bool:
        raise UnavailableActionError("the reference signer has no PIN")

    def toggle_passphrase(self) -> bool:
        raise UnavailableActionError("the reference signer has no passphrase")

    # -- beyond HWI 3.2 ------------------------------------------------------------------------------------
    def register_policy(self, name: str, descriptor: str) -> dict:
        """Register a wallet the device signs for (multisig, wpkh or tr); returns what it showed and its proof."""
        return self._call("register", name=name, descriptor=descriptor)

    def register_watch_only(self, name: str, descriptor: str) -> dict:
        """Register a custody multisig the device holds no key in, as a destination only."""
        return self._call("register_watch_only", name=name, descriptor=descriptor)

    def install_firmware(self, image: bytes) -> dict:
        return self._call("install_firmware", image=base64.b64encode(image).decode())

    def device_info(self) -> dict:
        return self._call("info")

    def policy_log(self) -> list[dict]:
        return self._call("hsm_log")


def enumerate(password: str | None = None, expert: bool = False, chain: Chain = Chain.MAIN,
              allow_emulators: bool = False) -> list[dict]:
    """Every reference signer that answers on a socket announced in the discovery directories."""
    found = []
    for directory in discovery_dirs():
        if not directory.is_dir():
            continue
        for socket_path in sorted(directory.glob("*.sock")):
            try:
                info = call(str(socket_path), {"op": "info"}, timeout=2)
            except (ConnectionError, DeviceError, OSError, ValueError):
                continue                              # a stale announcement: that simulator has stopped
            found.append({"type": DEVICE_TYPE, "model": info["model"], "label": info["serial"],
                          "path": str(socket_path), "fingerprint": info["fingerprint"], "needs_pin_sent": False,
                          "needs_passphrase_sent": False})
    return found
