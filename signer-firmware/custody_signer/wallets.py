"""Multisig wallets registered on the device (BIP-388 style: a name and a descriptor template).

A registration is accepted only after the device checks the policy itself: a segwit v0 multisig
(`wsh(sortedmulti(...))` or `wsh(multi(...))`, as Coldcard and Jade sign them) with 1 <= M <= N <= 15,
every key with its origin and the `/<0;1>/*` receive/change branches, no key twice, every key for the
device's network, and the device's own key in it exactly once, compared byte for byte with the key it
derives itself at that origin path. What the device shows (M, N, its position, the first receive
address) is what its holder confirms. Later, inputs and change are trusted only when they re-derive
from such a registered wallet within a bounded index.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache

from embit import bip32
from embit.descriptor import Descriptor
from embit.descriptor.miniscript import Multi, Sortedmulti
from embit.networks import NETWORKS
from embit.script import Script

MAX_INDEX = 10_000            # receive/change indexes above this are never trusted (change-to-huge-index attack)
MAX_KEYS = 15                 # P2WSH CHECKMULTISIG standardness


class RegistrationError(ValueError):
    """The device refused a wallet; the message says why."""


@dataclass(frozen=True)
class Wallet:
    name: str
    descriptor: str           # as registered, normalised (h for hardened)
    threshold: int
    keys: int
    position: int             # this device's key, 1-based, in the order the descriptor lists them
    own_origin: tuple[int, ...]

    @property
    def policy_id(self) -> str:
        return policy_id(self.name, self.descriptor)

    def script_at(self, branch: int, index: int) -> bytes:
        return _scripts(self.descriptor, branch, index)[0]

    def witness_script_at(self, branch: int, index: int) -> bytes:
        return _scripts(self.descriptor, branch, index)[1]

    def address_at(self, branch: int, index: int, network: str) -> str:
        return Script(self.script_at(branch, index)).address(NETWORKS[network])

    def to_json(self) -> dict:
        return {"name": self.name, "descriptor": self.descriptor, "threshold": self.threshold, "keys": self.keys,
                "position": self.position, "own_origin": list(self.own_origin)}

    @classmethod
    def from_json(cls, data: dict) -> Wallet:
        return cls(data["name"], data["descriptor"], data["threshold"], data["keys"], data["position"],
                   tuple(data["own_origin"]))


def normalise(descriptor: str) -> str:
    """The descriptor as the device stores and compares it: no checksum, `h` for hardened."""
    return descriptor.strip().split("#")[0].replace("'", "h")


def policy_id(name: str, descriptor: str) -> str:
    """What a registration proof commits to: the name and the normalised descriptor. The coordinator
    computes it too, to check the proof against the policy it sent."""
    return hashlib.sha256(f"{name}\n{normalise(descriptor)}".encode()).hexdigest()


def check_wallet(name: str, descriptor: str, root: bip32.HDKey, network: str) -> Wallet:
    """Every check the device makes before it registers `descriptor` under `name`."""
    if not name or len(name) > 64 or not name.isprintable():
        raise RegistrationError("a wallet name is 1 to 64 printable characters")
    text = normalise(descriptor)
    try:
        parsed = Descriptor.from_string(text)
    except Exception as e:                        # embit raises several types for malformed text
        raise RegistrationError(f"not a descriptor this device reads ({e})") from None
    if not (parsed.is_segwit and not parsed.is_wrapped and not parsed.is_taproot
            and isinstance(parsed.miniscript, (Multi, Sortedmulti))):
        raise RegistrationError("this device registers wsh(sortedmulti(...)) or wsh(multi(...)) only")
    threshold = parsed.miniscript.args[0].num
    keys = list(parsed.keys)
    if not 1 <= threshold <= len(keys) <= MAX_KEYS:
        raise RegistrationError(f"{threshold}-of-{len(keys)} is not a valid multisig (1 <= M <= N <= {MAX_KEYS})")
    xpub_version = NETWORKS[network]["xpub"]
    seen, position, own_origin = set(), None, None
    for n, key in enumerate(keys, start=1):
        if key.origin is None or not key.is_extended:
            raise RegistrationError(f"key {n} has no key origin or is not an extended key")
        if key.allowed_derivation is None or str(key.allowed_derivation) != "/<0;1>/*":
            raise RegistrationError(f"key {n} must end in /<0;1>/* (receive and change branches)")
        if key.key.version != xpub_version:
            raise RegistrationError(f"key {n} is not for {network}")
        if key.key.key.sec() in seen:
            raise RegistrationError(f"key {n} appears twice")
        seen.add(key.key.key.sec())
        if key.origin.fingerprint == root.my_fingerprint:
            mine = root.derive(key.origin.derivation).to_public()
            if mine.key.sec() != key.key.key.sec() or mine.chain_code != key.key.chain_code:
                raise RegistrationError(f"key {n} claims this device's fingerprint but is not the key it holds "
                                        f"at that path (a swapped xpub?)")
            if position is not None:
                raise RegistrationError("this device's key appears twice")
            position, own_origin = n, tuple(key.origin.derivation)
    if position is None:
        raise RegistrationError("this device's key is not in the policy (a swapped xpub?)")
    return Wallet(name, text, threshold, len(keys), position, own_origin)


@lru_cache(maxsize=64)
def _parsed(descriptor: str) -> Descriptor:
    return Descriptor.from_string(descriptor)


@lru_cache(maxsize=4096)
def _scripts(descriptor: str, branch: int, index: int) -> tuple[bytes, bytes]:
    """(scriptPubKey, witness script) at branch/index: parsing and deriving are most of a signature's cost."""
    derived = _parsed(descriptor).derive(index, branch_index=branch)
    return derived.script_pubkey().data, derived.witness_script().data


def derivation_in(wallet: Wallet, path: list[int]) -> tuple[int, int] | None:
    """(branch, index) when `path` is this wallet's own key path + /branch/index within bounds."""
    origin = list(wallet.own_origin)
    if len(path) != len(origin) + 2 or path[:len(origin)] != origin:
        return None
    branch, index = path[-2], path[-1]
    if branch not in (0, 1) or not 0 <= index <= MAX_INDEX:
        return None
    return branch, index
