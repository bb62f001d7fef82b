"""Wallets registered on the device (BIP-388 style: a name and a descriptor template).

A registration is accepted only after the device checks the policy itself: a segwit v0 multisig
(`wsh(sortedmulti(...))` or `wsh(multi(...))`, as Coldcard and Jade sign them) with 1 <= M <= N <= 15,
every key with its origin and the `/<0;1>/*` receive/change branches, no key twice, every key for the
device's network, and the device's own key in it exactly once, compared byte for byte with the key it
derives itself at that origin path. What the device shows (M, N, its position, the first receive
address) is what its holder confirms. Later, inputs and change are trusted only when they re-derive
from such a registered wallet within a bounded index.

A single-key wallet (a mining fleet's payout wallet) is `wpkh(KEY)` (BIP-84) or `tr(KEY)` (BIP-86, key path
only) whose one key is the device's own key at m/84h|86h/<coin>h/<account>h, with `/<0;1>/*` or `/0/*`.

A watch-only wallet is a custody multisig the device holds no key in (the coordinator's custody policy): it
is never signed for, only recognised as a destination, so a policy can say "pay custody only".
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from embit import bip32
from embit.bip32 import HARDENED_INDEX
from embit.descriptor import Descriptor
from embit.descriptor.miniscript import Multi, Sortedmulti
from embit.networks import NETWORKS
from embit.script import Script

from .protocol import normalise, policy_id

MAX_INDEX = 10_000            # receive/change indexes above this are never trusted (change-to-huge-index attack)
MAX_KEYS = 15                 # P2WSH CHECKMULTISIG standardness
PURPOSE = {"wpkh": 84, "tr": 86}  # BIP-84 and BIP-86 account paths for single-key wallets
MULTISIG_ONLY = "this device registers wsh(sortedmulti(...)) or wsh(multi(...)) only as multisig"


class RegistrationError(ValueError):
    """The device refused a wallet; the message says why."""


@dataclass(frozen=True)
class Wallet:
    name: str
    descriptor: str           # as registered, normalised (h for hardened)
    threshold: int
    keys: int
    position: int             # this device's key, 1-based, in the order the descriptor lists them (0: watch-only)
    own_origin: tuple[int, ...]
    kind: str = "wsh"         # "wsh" (multisig), "wpkh" or "tr" (single key)

    @property
    def policy_id(self) -> str:
        return policy_id(self.name, self.descriptor)

    @property
    def branches(self) -> tuple[int, ...]:
        """A `/0/*` wallet has one branch: its change goes back to it at a receive index."""
        return (0, 1) if "/<0;1>/*" in self.descriptor else (0,)

    def script_at(self, branch: int, index: int) -> bytes:
        return _scripts(self.descriptor, branch, index)[0]

    def witness_script_at(self, branch: int, index: int) -> bytes:
        return _scripts(self.descriptor, branch, index)[1]

    def address_at(self, branch: int, index: int, network: str) -> str:
        return Script(self.script_at(branch, index)).address(NETWORKS[network])

    def to_json(self) -> dict:
        return {"name": self.name, "descriptor": self.descriptor, "threshold": self.threshold, "keys": self.keys,
                "position": self.position, "own_origin": list(self.own_origin), "kind": self.kind}

    @classmethod
    def from_json(cls, data: dict) -> Wallet:
        return cls(data["name"], data["descriptor"], data["threshold"], data["keys"], data["position"],
                   tuple(data["own_origin"]), data.get("kind", "wsh"))


def check_wallet(name: str, descriptor: str, root: bip32.HDKey, network: str) -> Wallet:
    """Every check the device makes before it registers `descriptor` under `name` as a wallet it signs for."""
    text, parsed, kind = _parse(name, descriptor)
    if kind in PURPOSE:
        return _check_single_key(name, text, parsed.key, kind, root, network)
    if kind != "wsh":
        raise RegistrationError(f"{MULTISIG_ONLY}; single-key wallets are wpkh(KEY) or tr(KEY) with its own key")
    threshold, keys = _check_multisig(parsed, network)
    position, own_origin = None, None
    for n, key in enumerate(keys, start=1):
        if key.origin.fingerprint == root.my_fingerprint:
            _check_own(f"key {n}", key, root)
            if position is not None:
                raise RegistrationError("this device's key appears twice")
            position, own_origin = n, tuple(key.origin.derivation)
    if position is None:
        raise RegistrationError("this device's key is not in the policy (a swapped xpub?)")
    return Wallet(name, text, threshold, len(keys), position, own_origin)


def check_watch_only(name: str, descriptor: str, root: bip32.HDKey, network: str) -> Wallet:
    """The checks before a custody multisig is registered as a destination only: the same shape as a signing
    multisig, and no key of this device in it (a wallet it holds a key in is registered to sign)."""
    text, parsed, kind = _parse(name, descriptor)
    if kind != "wsh":
        raise RegistrationError("a watch-only wallet is a custody multisig: wsh(sortedmulti(...)) or wsh(multi(...))")
    threshold, keys = _check_multisig(parsed, network)
    if any(key.origin.fingerprint == root.my_fingerprint for key in keys):
        raise RegistrationError("this device holds a key in that policy: register it as a signing wallet instead")
    return Wallet(name, text, threshold, len(keys), 0, ())


def _parse(name: str, descriptor: str) -> tuple[str, Descriptor, str | None]:
    """The normalised text, the parsed descriptor and its kind ("wsh", "wpkh", "tr"; None for any other)."""
    if not name or len(name) > 64 or not name.isprintable():
        raise RegistrationError("a wallet name is 1 to 64 printable characters")
    text = normalise(descriptor)
    try:
        parsed = Descriptor.from_string(text)
    except Exception as e:                        # embit raises several types for malformed text
        raise RegistrationError(f"not a descriptor this device reads ({e})") from None
    return text, parsed, descriptor_kind(parsed)


def descriptor_kind(parsed: Descriptor) -> str | None:
    """What the device could register: "wsh" (multisig), "wpkh" or "tr" (key path only); None otherwise."""
    if parsed.sh:
        return None                               # wrapped segwit: never registered
    if parsed.taproot:
        return "tr" if parsed.key is not None and not parsed.taptree else None   # key path only
    if parsed.wpkh and parsed.key is not None:
        return "wpkh"
    if parsed.wsh and isinstance(parsed.miniscript, (Multi, Sortedmulti)):
        return "wsh"
    return None


def _check_multisig(parsed: Descriptor, network: str) -> tuple[int, list]:
    """M, N and every key of a multisig template: origins, branches, network, no key twice."""
    threshold = parsed.miniscript.args[0].num
    keys = list(parsed.keys)
    if not 1 <= threshold <= len(keys) <= MAX_KEYS:
        raise RegistrationError(f"{threshold}-of-{len(keys)} is not a valid multisig (1 <= M <= N <= {MAX_KEYS})")
    seen = set()
    for n, key in enumerate(keys, start=1):
        _check_key(f"key {n}", key, network, ("/<0;1>/*",))
        if key.key.key.sec() in seen:
            raise RegistrationError(f"key {n} appears twice")
        seen.add(key.key.key.sec())
    return threshold, keys


def _check_single_key(name: str, text: str, key, kind: str, root: bip32.HDKey, network: str) -> Wallet:
    """A single-key wallet: the device's own key at the BIP-84/86 account path for its network."""
    _check_key("the key", key, network, ("/<0;1>/*", "/0/*"))
    path = list(key.origin.derivation)
    purpose, coin = PURPOSE[kind], 0 if network == "main" else 1
    if not (len(path) == 3 and path[:2] == [purpose + HARDENED_INDEX, coin + HARDENED_INDEX]
            and path[2] >= HARDENED_INDEX):
        raise RegistrationError(f"{MULTISIG_ONLY}; a single-key {kind} is at m/{purpose}h/{coin}h/<account>h "
                                f"(BIP-{purpose}), not {bip32.path_to_str(path)}")
    if key.origin.fingerprint != root.my_fingerprint:
        raise RegistrationError("the key is not this device's (someone else's key?)")
    _check_own("the key", key, root)
    return Wallet(name, text, 1, 1, 1, tuple(path), kind)


def _check_key(label: str, key, network: str, suffixes: tuple[str, ...]) -> None:
    if key.origin is None or not key.is_extended:
        raise RegistrationError(f"{label} has no key origin or is not an extended key")
    if key.allowed_derivation is None or str(key.allowed_derivation) not in suffixes:
        raise RegistrationError(f"{label} must end in {' or '.join(suffixes)}"
                                + (" (receive and change branches)" if len(suffixes) == 1 else ""))
    if key.key.version != NETWORKS[network]["xpub"]:
        raise RegistrationError(f"{label} is not for {network}")


def _check_own(label: str, key, root: bip32.HDKey) -> None:
    """Byte for byte: the key claiming this device's fingerprint is the one the device derives at that path."""
    mine = root.derive(key.origin.derivation).to_public()
    if mine.key.sec() != key.key.key.sec() or mine.chain_code != key.key.chain_code:
        raise RegistrationError(f"{label} claims this device's fingerprint but is not the key it holds "
                                f"at that path (a swapped xpub?)")


@lru_cache(maxsize=64)
def _parsed(descriptor: str) -> Descriptor:
    return Descriptor.from_string(descriptor)


@lru_cache(maxsize=4096)
def _scripts(descriptor: str, branch: int, index: int) -> tuple[bytes, bytes]:
    """(scriptPubKey, witness script) at branch/index: parsing and deriving are most of a signature's cost.
    A single-key wallet has no witness script (b"")."""
    derived = _parsed(descriptor).derive(index, branch_index=branch)
    witness_script = derived.witness_script()
    return derived.script_pubkey().data, witness_script.data if witness_script is not None else b""


def derivation_in(wallet: Wallet, path: list[int]) -> tuple[int, int] | None:
    """(branch, index) when `path` is this wallet's own key path + /branch/index within bounds."""
    origin = list(wallet.own_origin)
    if len(path) != len(origin) + 2 or path[:len(origin)] != origin:
        return None
    branch, index = path[-2], path[-1]
    if branch not in wallet.branches or not 0 <= index <= MAX_INDEX:
        return None
    return branch, index


def proven_at(wallet: Wallet, path: list[int], script_pubkey: bytes) -> tuple[int, int] | None:
    """(branch, index) when `script_pubkey` is the wallet's script at the last two elements of `path` (any
    key's path: a watch-only wallet's keys are not this device's), within bounds: the script is the proof."""
    if len(path) < 2:
        return None
    branch, index = path[-2], path[-1]
    if branch not in wallet.branches or not 0 <= index <= MAX_INDEX:
        return None
    return (branch, index) if wallet.script_at(branch, index) == script_pubkey else None
