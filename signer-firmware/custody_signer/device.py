"""The reference signer: one device whose state directory stands in for its flash.

The seed is made here from the operating system's randomness the first time the device starts and is
never exported: there is no command that returns it or any private key. Everything the coordinator
can ask for is below: identity, extended public keys, registration of a multisig or single-key wallet
(with a proof signed by the device's key) or of a watch-only custody wallet (a destination only), showing
an address, BIP-322 message signatures, PSBT signatures after the device's own checks and its policy, and
firmware installs. What the device "shows" its holder is
appended to `screen.log`.
"""
from __future__ import annotations

import base64
import json
import re
import secrets
import time
from pathlib import Path

from embit import bip32, script
from embit.descriptor import Descriptor
from embit.networks import NETWORKS
from embit.transaction import SIGHASH

from . import bip322

from .durable import append, atomic_write, drop_torn_tail, make_dirs, remove_temporaries
from .firmware import build_image
from .flash import Flash
from .hsm import Hsm
from .inspection import Coin, FeeCaps, SigningRefused, inspect
from .proofs import ExactPSBT, inspect_proof, is_proof
from .protocol import (MODEL, TAP_KEY_SIG, FirmwareError, approvals_in, normalise, registration_message,
                       test_release_keys, test_release_public_keys, version_text)
# the protocol's own, named here too for the tests that import it from this module
from .wallets import derivation_in, MAX_INDEX, RegistrationError, Wallet, check_wallet, check_watch_only, descriptor_kind

RELEASE_THRESHOLD = 2                      # of the three release keys
SELF_TEST_MAGIC = b"custody-signer firmware\n"
NETWORK = "regtest"


class DeviceError(ValueError):
    """A request the device refuses; the message is what its screen would say."""


def factory_image(version: str = "1.0.0", epoch: int = 1, model: str = MODEL) -> bytes:
    """The image a simulated device leaves the factory with (public test keys, as Jade's fakeprod)."""
    payload = SELF_TEST_MAGIC + f"reference signer {version}\n".encode()
    return build_image(payload, model=model, version=version, epoch=epoch,
                       signers=test_release_keys(3)[:RELEASE_THRESHOLD])


def self_test(payload: bytes) -> bool:
    return payload.startswith(SELF_TEST_MAGIC)


def _flash(state: Path, model: str) -> Flash:
    """A simulated device's flash: it trusts the public test release keys, two of three must sign."""
    return Flash(state / "flash", model=model, trusted_keys=test_release_public_keys(3),
                 threshold=RELEASE_THRESHOLD, production=False)


def read_seed(path: Path) -> bytes:
    """The seed, only if its file is whole: 64 hex digits. A torn or empty file is never taken for a seed
    (HDKey.from_seed would make a key of whatever bytes it is given, even none)."""
    text = path.read_text(errors="replace").strip()
    if not re.fullmatch(r"[0-9a-fA-F]{64}", text):
        raise DeviceError(f"{path} is damaged ({path.stat().st_size} bytes, not a 32-byte seed in hex)")
    return bytes.fromhex(text)


class Device:
    def __init__(self, state: Path, clock=time.time):
        self.state = Path(state)
        seed = read_seed(self.state / "seed.hex")
        self.config = json.loads((self.state / "device.json").read_text())
        self.flash = _flash(self.state, self.config["model"])
        self.running = self.flash.boot(self_test)
        for log in ("hsm_log.jsonl", "screen.log"):          # an append a power cut tore, never acted on
            drop_torn_tail(self.state / log)
        self.hsm = Hsm(self.state, clock)
        self._root = bip32.HDKey.from_seed(seed, version=NETWORKS[self.network]["xprv"])

    @classmethod
    def create(cls, state: Path, *, model: str = MODEL, network: str = NETWORK, image: bytes | None = None,
               clock=time.time) -> Device:
        """First start: make the seed on the device and flash the factory image.

        Resumable: a first start killed or cut at any point completes at the next one. Each file is written
        whole (`atomic_write`), so a seed.hex present is a complete seed and is kept; device.json, written
        last, marks the first start done, and nothing about the device (its fingerprint) is reported before
        it is. A seed.hex that is not a whole seed can only be one an older firmware tore before finishing
        its first start, so before anything was derived from it: it is replaced."""
        state = Path(state)
        make_dirs(state, 0o700)
        if (state / "device.json").exists():
            raise DeviceError(f"{state} already holds a device")
        remove_temporaries(state)
        seed = state / "seed.hex"
        try:
            read_seed(seed)
        except (FileNotFoundError, DeviceError):
            atomic_write(seed, secrets.token_bytes(32).hex())
        flash = _flash(state, model)
        try:
            provisioned = flash.record()["active"] is not None
        except FirmwareError:          # a record an older firmware tore: this first start never ended
            provisioned = False
        if not provisioned:
            flash.provision(image or factory_image(model=model))
        atomic_write(state / "device.json", json.dumps({"model": model, "network": network,
                                                        "serial": "RS-" + secrets.token_hex(4).upper(),
                                                        "fee_caps": vars(FeeCaps())}))
        return cls(state, clock)

    @classmethod
    def open_or_create(cls, state: Path, **kwargs) -> Device:
        return cls(state, kwargs.get("clock", time.time)) if (Path(state) / "device.json").exists() \
            else cls.create(state, **kwargs)

    # -- identity ------------------------------------------------------------------------------------------
    @property
    def network(self) -> str:
        return self.config["network"]

    @property
    def fingerprint(self) -> str:
        return self._root.my_fingerprint.hex()

    def info(self) -> dict:
        record = self.flash.record()
        return {"model": self.config["model"], "serial": self.config["serial"], "fingerprint": self.fingerprint,
                "network": self.network, "firmware": {"version": version_text(self.running.version),
                                                      "epoch": self.running.epoch, "key_set": self.running.key_set,
                                                      "epoch_counter": record["epoch_counter"]},
                "wallets": [w.name for w in self.wallets()], "watch_only": [w.name for w in self.watch_only()],
                "hsm_policy": self.hsm.policy is not None}

    def xpub(self, path: str) -> str:
        node = self._derive(path)
        return node.to_public().to_string(NETWORKS[self.network]["xpub"])

    def _derive(self, path: str) -> bip32.HDKey:
        try:
            indexes = bip32.parse_path(path.replace("'", "h"))
        except Exception:
            raise DeviceError(f"{path!r} is not a derivation path") from None
        if len(indexes) > 8:
            raise DeviceError("derivation paths are at most 8 levels deep")
        return self._root.derive(indexes)

    def _show(self, *lines: str) -> None:
        append(self.state / "screen.log", "\n".join(lines) + "\n--\n")

    # -- messages ------------------------------------------------------------------------------------------
    def sign_message(self, message: bytes, path: str) -> dict:
        """BIP-322 simple signature by the key at `path`, for that key's P2WPKH address."""
        key = self._derive(path)
        address = script.p2wpkh(key.to_public().key).address(NETWORKS[self.network])
        self._show("Sign message?", message.decode(errors="replace")[:200], f"as {address}")
        return {"address": address, "signature": bip322.sign_p2wpkh(key.key, message)}

    # -- wallets -------------------------------------------------------------------------------------------
    def wallets(self) -> list[Wallet]:
        """The wallets this device signs for."""
        return self._stored("wallets.json")

    def watch_only(self) -> list[Wallet]:
        """Custody wallets this device holds no key in: destinations a policy can require, never signed for.
        Kept in their own file so no signing path can mistake one for a wallet it spends from."""
        return self._stored("watch_only.json")

    def _stored(self, file: str) -> list[Wallet]:
        path = self.state / file
        return [Wallet.from_json(w) for w in json.loads(path.read_text())] if path.exists() else []

    def _is_new(self, wallet: Wallet) -> bool:
        """False when this wallet is registered already; one name is one wallet across signing and watch-only
        (a policy's `wallet` and `to_wallets` name them), so a name taken by another descriptor is refused."""
        for other in (*self.wallets(), *self.watch_only()):
            if other.name == wallet.name:
                if other.descriptor != wallet.descriptor:
                    raise DeviceError(f"a different wallet is already registered as {wallet.name!r}")
                return False
        return True

    def _store(self, file: str, wallet: Wallet) -> None:
        atomic_write(self.state / file, json.dumps([w.to_json() for w in [*self._stored(file), wallet]], indent=1))

    def register(self, name: str, descriptor: str) -> dict:
        """Register a wallet this device signs for (multisig, or single key: wpkh/tr of its own key) after the
        device's own checks; returns what the device showed and a proof: a BIP-322 signature by the device's
        key in the wallet over the policy id."""
        try:
            wallet = check_wallet(name, descriptor, self._root, self.network)
        except RegistrationError as e:
            raise DeviceError(str(e)) from None
        first = wallet.address_at(0, 0, self.network)
        new = self._is_new(wallet)
        shape = (f"{wallet.threshold} of {wallet.keys}, this device is key {wallet.position}" if wallet.kind == "wsh"
                 else f"single key ({wallet.kind}), this device's key at {bip32.path_to_str(wallet.own_origin)}")
        self._show(f"Register {name}?", shape, f"first address {first}")
        if new:
            self._store("wallets.json", wallet)
        proof = self.sign_message(registration_message(wallet.policy_id), bip32.path_to_str(wallet.own_origin))
        return {"name": name, "policy_id": wallet.policy_id, "threshold": wallet.threshold, "keys": wallet.keys,
                "position": wallet.position, "first_address": first, "proof": proof["signature"],
                "proof_address": proof["address"]}

    def register_watch_only(self, name: str, descriptor: str) -> dict:
        """Register a custody multisig this device holds no key in, as a destination only (a `to_wallets` rule
        names it). Its holder confirms the policy and first address on the screen; there is no proof, since
        the device has no key in the wallet to sign one with."""
        try:
            wallet = check_watch_only(name, descriptor, self._root, self.network)
        except RegistrationError as e:
            raise DeviceError(str(e)) from None
        first = wallet.address_at(0, 0, self.network)
        new = self._is_new(wallet)
        self._show(f"Register watch-only {name}?", f"{wallet.threshold} of {wallet.keys}, no key on this device: "
                   "payments may be sent to it, never signed from it", f"first address {first}")
        if new:
            self._store("watch_only.json", wallet)
        return {"name": name, "policy_id": wallet.policy_id, "threshold": wallet.threshold, "keys": wallet.keys,
                "watch_only": True, "first_address": first}

    def wallet(self, name: str) -> Wallet:
        for w in self.wallets():
            if w.name == name:
                return w
        raise DeviceError(f"no wallet named {name!r} is registered on this device")

    def wallet_for(self, descriptor: str) -> Wallet:
        """The registered wallet this descriptor names: the same M, the same kind of multisig and the same
        keys with the same origins (in any order for sortedmulti), however the text is written."""
        wanted = wallet_shape(descriptor)
        for w in self.wallets():
            if wallet_shape(w.descriptor) == wanted:
                return w
        raise DeviceError("that policy is not registered on this device")

    def display_address(self, name: str, branch: int, index: int) -> str:
        wallet = self.wallet(name)
        if branch not in wallet.branches or not 0 <= index <= MAX_INDEX:
            kinds = "receive (0) or change (1)" if wallet.branches == (0, 1) else "receive (0)"
            raise DeviceError(f"only {kinds} addresses up to index {MAX_INDEX} are shown")
        address = wallet.address_at(branch, index, self.network)
        self._show(f"{name} {'change' if branch else 'receive'} #{index}", address)
        return address

    def display_path(self, path: str) -> str:
        """A single-key wallet's address by its full key path (how HWI asks for a single-sig address)."""
        indexes = bip32.parse_path(path)
        for wallet in self.wallets():
            where = derivation_in(wallet, indexes) if wallet.kind != "wsh" else None
            if where is not None:
                return self.display_address(wallet.name, *where)
        raise DeviceError(f"this device shows addresses of registered wallets only: {path} is not an address of "
                          "a registered single-key wallet")

    # -- transactions --------------------------------------------------------------------------------------
    def sign_psbt(self, psbt_b64: str) -> str:
        """Sign every input after the checks and the policy; the PSBT comes back with partial signatures.
        A PSBT carrying a proof-of-reserves message is a proof, checked and signed as one."""
        try:
            psbt = ExactPSBT.from_string(psbt_b64)
        except Exception as e:
            raise DeviceError(f"not a PSBT ({e})") from None
        if is_proof(psbt):
            return self._sign_proof(psbt)
        try:
            facts, coins = inspect(psbt, self.wallets(), self._root, self.network, FeeCaps(**self.config["fee_caps"]),
                                   self.watch_only())
        except SigningRefused as e:
            raise DeviceError(str(e)) from None
        decision = self.hsm.decide(facts, approvals_in(psbt.unknown))
        if not decision.allowed:
            raise DeviceError("the signing policy refuses: " + "; ".join(decision.reasons))
        self._show(f"Signed {facts.spent} sat from {facts.wallet.name}", *facts.destinations, f"fee {facts.fee} sat")
        self._sign(psbt, facts.wallet, coins)
        return psbt.to_string()

    def _sign_proof(self, psbt: ExactPSBT) -> str:
        """A proof of reserves: its holder reads the message and the amount every signature vouches for."""
        try:
            proof, coins = inspect_proof(psbt, self.wallets(), self._root)
        except SigningRefused as e:
            raise DeviceError(str(e)) from None
        decision = self.hsm.decide_proof(proof)
        if not decision.allowed:
            raise DeviceError("the signing policy refuses: " + "; ".join(decision.reasons))
        self._show("Proof of reserves?", *proof.message.decode().split("\n"),
                   f"{proof.total} sat in {proof.coins} coins of {proof.wallet.name}")
        self._sign(psbt, proof.wallet, coins)
        return psbt.to_string()

    def _sign(self, psbt: ExactPSBT, wallet: Wallet, coins: list[Coin]) -> None:
        """SIGHASH_ALL (BIP-143) over the proven amount and the wallet's witness script (for wpkh, the P2PKH
        script code of its key), never the PSBT's claims; only the coins' inputs are read, so a proof's
        commitment input needs no utxo. Taproot is signed apart: BIP-341 commits to every input's coin."""
        if wallet.kind == "tr":
            return self._sign_taproot(psbt, wallet, coins)
        account = self._root.derive(list(wallet.own_origin))
        tx = psbt.tx
        for coin in coins:
            key = account.child(coin.branch).child(coin.index)
            inp = psbt.inputs[coin.input]
            if wallet.kind == "wpkh":
                script_code = script.p2pkh(key.to_public().key)
            else:
                script_code = inp.witness_script = script.Script(wallet.witness_script_at(coin.branch, coin.index))
            signature = key.key.sign(tx.sighash_segwit(coin.input, script_code, coin.value, SIGHASH.ALL))
            inp.partial_sigs[key.to_public().key] = signature.serialize() + bytes([SIGHASH.ALL])

    def _sign_taproot(self, psbt: ExactPSBT, wallet: Wallet, coins: list[Coin]) -> None:
        """BIP-86 key path: the key tweaked with no script tree, a Schnorr signature over the BIP-341 digest of
        every input's proven amount and script (so every input must be a proven coin). SIGHASH_DEFAULT (a
        64-byte signature) unless the PSBT asks for ALL; put in PSBT_IN_TAP_KEY_SIG (0x13), which embit keeps
        among an input's unknown fields."""
        if len(coins) != len(psbt.inputs):
            raise DeviceError("a taproot signature commits to every input's coin: only spends of this wallet's "
                              "coins alone are signed")
        account = self._root.derive(list(wallet.own_origin))
        tx = psbt.tx
        scripts = [script.Script(wallet.script_at(c.branch, c.index)) for c in coins]
        values = [c.value for c in coins]
        for coin in coins:
            inp = psbt.inputs[coin.input]
            sighash = SIGHASH.ALL if inp.sighash_type == SIGHASH.ALL else SIGHASH.DEFAULT
            key = account.child(coin.branch).child(coin.index).key.taproot_tweak(b"")
            signature = key.schnorr_sign(tx.sighash_taproot(coin.input, scripts, values, sighash)).serialize()
            inp.unknown[TAP_KEY_SIG] = signature + (bytes([sighash]) if sighash != SIGHASH.DEFAULT else b"")

    # -- firmware ------------------------------------------------------------------------------------------
    def install_firmware(self, image: bytes) -> dict:
        """Verify and stage the image, then restart into it (falling back if its self-test fails)."""
        try:
            staged = self.flash.install(image)
        except FirmwareError as e:
            raise DeviceError(str(e)) from None
        self.running = self.flash.boot(self_test)
        if self.running.version != staged.version:
            raise DeviceError(f"firmware {version_text(staged.version)} failed its self-test; "
                              f"still running {version_text(self.running.version)}")
        return self.info()["firmware"]


def shown_first_address(state: Path) -> str:
    """The first address the device's screen showed last (at a registration): what its holder reads."""
    lines = (Path(state) / "screen.log").read_text().splitlines()
    return [line for line in lines if line.startswith("first address ")][-1].removeprefix("first address ")


def wallet_shape(descriptor: str) -> tuple:
    try:
        parsed = Descriptor.from_string(normalise(descriptor))
        keys = [(k.origin.fingerprint, tuple(k.origin.derivation), k.key.key.sec(), k.key.chain_code)
                for k in parsed.keys]
    except Exception:
        raise DeviceError("not a descriptor this device reads") from None
    if parsed.miniscript is None:                       # a single-key wallet
        return descriptor_kind(parsed), 1, tuple(keys)
    kind = type(parsed.miniscript).__name__
    return kind, parsed.miniscript.args[0].num, tuple(sorted(keys) if kind == "Sortedmulti" else keys)


def decode_b64(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except ValueError:
        raise DeviceError("not base64") from None
