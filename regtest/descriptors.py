"""Output descriptors as Bitcoin Core 29's `scantxoutset` (and `deriveaddresses`, `getdescriptorinfo`,
`generatetodescriptor`) take them: BIP-380 checksums, ranges, BIP-389 multipath, and for each script
the descriptor Core reports for it, which is Core's *inferred* descriptor: every key written as the
derived public key with its full origin (`[fingerprint/path/index]pubkey`), `multi()` for
`sortedmulti()` with the keys in script order, `addr()`, `raw()`, `pk()`, `multi()` or `rawtr()` for
scripts given without keys.

embit parses; keys are then derived here. For the common shapes (pk, pkh, wpkh, combo, sh/wsh
multi/sortedmulti, tr with pk/multi_a/sortedmulti_a leaves, rawtr) each key is derived to its
branch once and each index costs one BIP-32 step per key through libsecp256k1 (coincurve), because
a scan expands a thousand indexes or more on every path. Other miniscript goes through embit.
"""
from __future__ import annotations

import hashlib
import hmac
import re
import threading
from dataclasses import dataclass
from functools import lru_cache

from coincurve import PrivateKey, PublicKey
from embit import base58, bech32, bip32, ec
from embit.descriptor import Descriptor
from embit.descriptor.arguments import AllowedDerivation, KeyOrigin
from embit.descriptor.miniscript import Multi, MultiA, Pk, Pkh, Sortedmulti, SortedmultiA
from embit.descriptor.taptree import TapLeaf
from embit.hashes import hash160 as _hash160
from embit.networks import NETWORKS

from .script import push_number

RPC_INVALID_ADDRESS_OR_KEY = -5    # Core's code for a descriptor it refuses
RPC_INVALID_PARAMETER = -8         # ... and for a bad range or scan object
DEFAULT_RANGE = (0, 1000)          # Core's EvalDescriptorStringOrObject: indexes 0..1000, inclusive
MAX_RANGE_ITEMS = 1_000_000
HARDENED = 0x80000000
_HEX = re.compile(r"[0-9a-fA-F]+")
_FUNCTIONS = ("pk", "pkh", "wpkh", "combo", "multi", "sortedmulti", "sh", "wsh", "tr", "rawtr", "addr", "raw")


class DescriptorError(ValueError):
    """A descriptor or scan object Core would refuse, in Core's words; `code` is Core's RPC code."""

    def __init__(self, message: str, code: int = RPC_INVALID_ADDRESS_OR_KEY):
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class ScanObject:
    desc: str                        # the descriptor as given, without its checksum
    range: tuple[int, int] | None    # inclusive; None for descriptors without a wildcard

    @property
    def descriptor(self) -> str:
        """The descriptor with its checksum (re-)added."""
        return add_checksum(self.desc)


# -- BIP-380 checksum -------------------------------------------------------------------------
_INPUT_CHARSET = "0123456789()[],'/*abcdefgh@:$%{}IJKLMNOPQRSTUVWXYZ&+-.;<=>?!^_|~ijklmnopqrstuvwxyzABCDEFGH`#\"\\ "
_CHECKSUM_CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_POSITION = {c: i for i, c in enumerate(_INPUT_CHARSET)}
_GENERATORS = (0xF5DEE51989, 0xA9FDCA3312, 0x1BAB10E32D, 0x3706B1677A, 0x644D626FFD)


def _polymod(c: int, value: int) -> int:
    """BIP-380's PolyMod: one GF(32) symbol into the 40-bit state."""
    top = c >> 35
    c = ((c & 0x7FFFFFFFF) << 5) ^ value
    for bit, generator in enumerate(_GENERATORS):
        if (top >> bit) & 1:
            c ^= generator
    return c


def _four_steps(c: int) -> int:
    for _ in range(4):
        c = _polymod(c, 0)
    return c


# Each group of 3 characters is 4 symbols (3 positions, then the 3 group numbers), so the checksum
# runs a group per step: four PolyMod steps shift the state by 20 bits, and what falls off the top
# comes back through two tables (the feedback is linear in those 20 bits); the group's 4 symbols
# (at most 20 bits) are one sum of three per-character tables. 3x BIP-380's loop, which matters
# because every script of a scan gets a checksummed descriptor.
_FEEDBACK_LOW = [_four_steps(i << 20) for i in range(1024)]
_FEEDBACK_HIGH = [_four_steps(i << 30) for i in range(1024)]
_GROUP = [{ch: ((pos & 31) << shift) + (pos >> 5) * weight for ch, pos in _POSITION.items()}
          for shift, weight in ((15, 9), (10, 3), (5, 1))]


def descriptor_checksum(desc: str) -> str:
    """BIP-380 checksum (8 characters)."""
    low, high = _FEEDBACK_LOW, _FEEDBACK_HIGH
    first, second, third = _GROUP
    whole = len(desc) - len(desc) % 3
    c, cls = 1, 0
    try:
        for a, b, d in zip(desc[0:whole:3], desc[1:whole:3], desc[2:whole:3]):
            c = ((c & 0xFFFFF) << 20) ^ low[(c >> 20) & 0x3FF] ^ high[c >> 30] ^ (first[a] + second[b] + third[d])
        for ch in desc[whole:]:
            c = _polymod(c, _POSITION[ch] & 31)
            cls = cls * 3 + (_POSITION[ch] >> 5)
    except KeyError:
        raise DescriptorError("Invalid characters in payload") from None
    if whole != len(desc):
        c = _polymod(c, cls)
    for _ in range(2):      # eight zero symbols
        c = ((c & 0xFFFFF) << 20) ^ low[(c >> 20) & 0x3FF] ^ high[c >> 30]
    c ^= 1
    return "".join(_CHECKSUM_CHARSET[(c >> (5 * (7 - j))) & 31] for j in range(8))


def add_checksum(desc: str) -> str:
    return f"{desc}#{descriptor_checksum(desc)}"


def check_and_strip_checksum(desc: str, require: bool = False) -> str:
    """Core's CheckChecksum: the descriptor without its checksum, or its error."""
    parts = desc.split("#")
    if len(parts) > 2:
        raise DescriptorError("Multiple '#' symbols")
    if len(parts) == 1 and require:
        raise DescriptorError("Missing checksum")
    if len(parts) == 2 and len(parts[1]) != 8:
        raise DescriptorError(f"Expected 8 character checksum, not {len(parts[1])} characters")
    computed = descriptor_checksum(parts[0])
    if len(parts) == 2 and parts[1] != computed:
        raise DescriptorError(f"Provided checksum '{parts[1]}' does not match computed checksum '{computed}'")
    return parts[0]


# -- scan objects and ranges ------------------------------------------------------------------
def parse_range(value) -> tuple[int, int]:
    """Core's ParseDescriptorRange: `n` means [0, n]; both ends inclusive; checks in Core's order."""
    def number(v):
        return isinstance(v, int) and not isinstance(v, bool)
    if number(value):
        begin, end = 0, value
    elif isinstance(value, list) and len(value) == 2 and all(number(v) for v in value):
        begin, end = value
        if begin > end:
            raise DescriptorError("Range specified as [begin,end] must not have begin after end", RPC_INVALID_PARAMETER)
    else:
        raise DescriptorError("Range must be specified as end or as [begin,end]", RPC_INVALID_PARAMETER)
    if begin < 0:
        raise DescriptorError("Range should be greater or equal than 0", RPC_INVALID_PARAMETER)
    if end >> 31:
        raise DescriptorError("End of range is too high", RPC_INVALID_PARAMETER)
    if end - begin >= MAX_RANGE_ITEMS:
        raise DescriptorError("Range is too large", RPC_INVALID_PARAMETER)
    return begin, end


def parse_scan_objects(scanobjects: list, network: str = "regtest") -> list[ScanObject]:
    """Core's scanobjects: descriptor strings, or {"desc": ..., "range": n | [begin, end]}. A ranged
    descriptor without a range gets [0, 1000]; a range given to an unranged one is ignored."""
    result = []
    for item in scanobjects:
        given_range = None
        if isinstance(item, str):
            desc = item
        elif isinstance(item, dict):
            desc = item.get("desc")
            if desc is None:
                raise DescriptorError("Descriptor needs to be provided in scan object", RPC_INVALID_PARAMETER)
            if not isinstance(desc, str):
                raise DescriptorError(f"JSON value of type {_json_type(desc)} is not of expected type string", -3)
            if item.get("range") is not None:       # Core checks the range before the descriptor
                given_range = parse_range(item["range"])
        else:
            raise DescriptorError("Scan object needs to be either a string or an object", RPC_INVALID_PARAMETER)
        body = check_and_strip_checksum(desc)
        ranged = _parse(body, network).ranged
        result.append(ScanObject(body, (given_range or DEFAULT_RANGE) if ranged else None))
    return result


def _json_type(value) -> str:
    return {bool: "bool", int: "number", float: "number", list: "array", dict: "object"}.get(type(value), "null")


# -- expansion --------------------------------------------------------------------------------
_recent: dict[tuple[ScanObject, str], dict[bytes, str]] = {}
_recent_lock = threading.Lock()


def expand(obj: ScanObject, network: str = "regtest") -> dict[bytes, str]:
    """scriptPubKey -> the descriptor (with checksum) Core reports for it, over the object's range and
    every multipath path. The last few expansions (of up to 20,000 scripts) are remembered, because
    wallets poll scantxoutset with the same objects."""
    with _recent_lock:
        found = _recent.get((obj, network))
    if found is None:
        found = _expand(obj, network)
        if len(found) <= 20_000:
            with _recent_lock:
                if len(_recent) >= 16:
                    del _recent[next(iter(_recent))]
                _recent[(obj, network)] = found
    return dict(found)


def _expand(obj: ScanObject, network: str) -> dict[bytes, str]:
    parsed = _parse(obj.desc, network)
    out = {}
    for path in parsed.paths:
        for index in _indexes(obj):
            for spk, text in path.outputs(index):
                out[spk] = text
    return {spk: add_checksum(text) for spk, text in out.items()}


def expand_paths(obj: ScanObject, network: str = "regtest") -> list[list[bytes]]:
    """Scripts in deriveaddresses order: one list per multipath path, each in index order."""
    parsed = _parse(obj.desc, network)
    return [[spk for index in _indexes(obj) for spk, _ in path.outputs(index)] for path in parsed.paths]


def describe(match: str) -> str:
    """The reported descriptor of an `expand` value (kept for callers written when values were lazy)."""
    return match


def _indexes(obj: ScanObject):
    return range(obj.range[0], obj.range[1] + 1) if obj.range else (0,)


# -- parsing ----------------------------------------------------------------------------------
class _Parsed:
    def __init__(self, paths: list, ranged: bool):
        self.paths = paths      # one entry per multipath path, each with .outputs(index)
        self.ranged = ranged


class _Fixed:
    """addr() and raw(): one script, reported as Core infers it (raw(76a9..88ac) is an addr())."""

    def __init__(self, spk: bytes, net: dict):
        self._outputs = [(spk, _infer(spk, net))]

    def outputs(self, index):
        return self._outputs


class _Unsupported(Exception):
    """A shape the fast path does not build; embit builds it."""


@lru_cache(maxsize=64)
def _parse(body: str, network: str) -> _Parsed:
    net = NETWORKS[network]
    name, paren, rest = body.partition("(")
    if name in ("multi_a", "sortedmulti_a"):
        raise DescriptorError("Can only have multi_a/sortedmulti_a inside tr()")
    if not paren or name not in _FUNCTIONS:
        raise DescriptorError(f"'{body}' is not a valid descriptor function")
    if name in ("addr", "raw"):
        if not rest.endswith(")"):
            raise DescriptorError(f"'{body}' is not a valid descriptor function")
        arg = rest[:-1]
        if name == "raw":
            if not _HEX.fullmatch(arg) or len(arg) % 2:
                raise DescriptorError("Raw script is not hex")
            spk = bytes.fromhex(arg)
        else:
            spk = _address_script(arg, net)
            if spk is None:
                raise DescriptorError("Address is not valid")
        return _Parsed([_Fixed(spk, net)], False)

    # embit knows neither hardened wildcards nor pk/combo/multi/rawtr at the top: note the first,
    # and parse the others in a wrapper that has the same keys.
    hardened_wildcards = [m.group(1) is not None for m in re.finditer(r"\*(h|')?", body)]
    text = re.sub(r"\*[h']", "*", body)
    wrapped = {"pk": "pkh", "combo": "pkh", "multi": "sh", "sortedmulti": "sh", "rawtr": "tr"}.get(name)
    if wrapped == "sh":
        text = f"sh({text})"
    elif wrapped:
        text = wrapped + text[len(name):]
    try:
        desc = Descriptor.from_string(text)
    except Exception as e:
        if "Hardened derivation is not allowed" in str(e):
            raise DescriptorError(f"Cannot derive script without private keys: '{body}'") from None
        raise DescriptorError(f"Invalid descriptor: {e}") from None
    keys = _Keys(net, hardened_wildcards, body)
    try:
        shape = _shape(desc, name, keys)
    except _Unsupported:
        return _embit_parsed(desc, keys, body)
    paths = [_Path(shape, [k[p] if len(k) > 1 else k[0] for k in keys.sources]) for p in range(keys.num_paths)]
    return _Parsed(paths, keys.ranged)


def _shape(desc, name: str, keys: _Keys):
    """The descriptor as nested tuples over key numbers; _Unsupported for other miniscript."""
    if name in ("pk", "combo"):
        return (name, keys.add(desc.key, f"{name}()"))
    if name == "rawtr":
        return ("rawtr", keys.add(desc.key, "rawtr()", xonly=True))
    if desc.taproot:
        return ("tr", keys.add(desc.key, "tr()", xonly=True), _tree(desc.taptree.tree, keys) if desc.taptree else None)
    if desc.miniscript is None:
        if desc.wpkh:
            node = ("wpkh", keys.add(desc.key, "wpkh()", compressed=True))
        else:
            node = ("pkh", keys.add(desc.key, "pkh()"))
    else:
        node = _script_shape(desc.miniscript, keys, compressed=desc.wsh)
        if node[0] == "multi":
            _check_multisig(node, keys, "bare" if name in ("multi", "sortedmulti") else "wsh" if desc.wsh else "sh")
        if name in ("multi", "sortedmulti"):
            return node
        if desc.wsh:
            node = ("wsh", node)
    return ("sh", node) if desc.sh else node


def _check_multisig(node, keys: _Keys, context: str):
    count = len(node[2])
    if count > 20:
        raise DescriptorError(f"Cannot have {count} keys in multisig; must have between 1 and 20 keys, inclusive")
    if context == "bare" and count > 3:
        raise DescriptorError(f"Cannot have {count} pubkeys in bare multisig; only at most 3 pubkeys")
    size = sum(len(keys.sources[i][0].sec) + 1 for i in node[2]) + 3
    if context == "sh" and size > 520:
        raise DescriptorError(f"P2SH script is too large, {size} bytes is larger than 520 bytes")


def _script_shape(ms, keys: _Keys, compressed: bool):
    if isinstance(ms, Multi) and not isinstance(ms, MultiA):
        members = [keys.add(k, "Multi: ", compressed=compressed) for k in ms.args[1:]]
        return ("multi", ms.args[0].num, members, isinstance(ms, Sortedmulti))
    if isinstance(ms, Pk):
        return ("pk", keys.add(ms.args[0], "pk()", compressed=compressed))
    if isinstance(ms, Pkh) and not isinstance(ms.args[0].key, str):
        return ("pkh", keys.add(ms.args[0], "pkh()", compressed=compressed))
    raise _Unsupported


def _tree(tree, keys: _Keys):
    if isinstance(tree, TapLeaf):
        ms = tree.miniscript
        if isinstance(ms, MultiA):
            members = [keys.add(k, "Multi: ", xonly=True) for k in ms.args[1:]]
            threshold = ms.args[0].num
            if not 1 <= len(members) <= 999:
                raise DescriptorError(f"Cannot have {len(members)} keys in multi_a; "
                                      "must have between 1 and 999 keys, inclusive")
            if threshold < 1:
                raise DescriptorError(f"Multisig threshold cannot be {threshold}, must be at least 1")
            if threshold > len(members):
                raise DescriptorError("Multisig threshold cannot be larger than the number of keys; "
                                      f"threshold is {threshold} but only {len(members)} keys specified")
            return ("multi_a", threshold, members, isinstance(ms, SortedmultiA))
        if isinstance(ms, Pk):
            return ("pk", keys.add(ms.args[0], "pk()", xonly=True))
        raise _Unsupported
    left, right = tree
    return ("{", _tree(left.tree, keys), _tree(right.tree, keys))


# -- keys -------------------------------------------------------------------------------------
class _Key:
    """One key expression on one multipath path: its key at an index, and the origin Core reports
    (`[fingerprint/path]`, with the fingerprint of the key itself when none is given)."""
    __slots__ = ("xonly", "sec", "text", "origin", "cc", "point", "priv")

    def __init__(self, xonly: bool, origin: str, sec: bytes, cc: bytes | None = None, priv: bytes | None = None):
        self.xonly, self.origin, self.sec, self.cc = xonly, origin, sec, cc
        self.text = f"[{origin}]{(sec[1:] if xonly else sec).hex()}"
        self.point = PublicKey(sec) if cc else None
        self.priv = PrivateKey(priv) if priv else None      # only for hardened wildcards

    def at(self, index: int) -> tuple[bytes, str]:
        if self.cc is None:
            return self.sec, self.text
        if self.priv is None:
            tweak = hmac.digest(self.cc, self.sec + index.to_bytes(4, "big"), "sha512")[:32]
            sec, step = self.point.add(tweak).format(), index
        else:
            data = b"\x00" + self.priv.secret + (index | HARDENED).to_bytes(4, "big")
            tweak = hmac.digest(self.cc, data, "sha512")[:32]
            sec, step = self.priv.add(tweak).public_key.format(), f"{index}h"
        return sec, f"[{self.origin}/{step}]{(sec[1:] if self.xonly else sec).hex()}"


class _Keys:
    """Collects the key expressions of a descriptor, checked as Core checks them."""

    def __init__(self, net: dict, hardened_wildcards: list[bool], body: str):
        self.net, self.hardened_wildcards, self.body = net, hardened_wildcards, body
        self.sources: list[list[_Key]] = []
        self.wildcards = 0
        self.num_paths = 1
        self.ranged = False

    def check(self, key, where: str, compressed: bool = False):
        """Network, compression, wildcard last; returns the key's multipath branches, if any."""
        prefix = where if not where or where.endswith(": ") else f"{where}: "
        k = key.key
        if isinstance(k, bip32.HDKey):
            if k.version not in (self.net["xpub"], self.net["xprv"]):
                raise DescriptorError(f"{prefix}key '{k.to_base58()}' is not valid")
        elif isinstance(k, ec.PrivateKey):
            if k.network is None or k.network["wif"] != self.net["wif"]:
                raise DescriptorError(f"{prefix}key '{k.wif()}' is not valid")
        if compressed and isinstance(k, (ec.PublicKey, ec.PrivateKey)) and not _public(k).compressed:
            raise DescriptorError(f"{prefix}Uncompressed keys are not allowed")
        derivation = key.allowed_derivation
        if derivation is not None and None in derivation.indexes[:-1]:
            raise DescriptorError(f"{prefix}'*' may only be the last step of a key path")
        branches = derivation.branches if derivation else None
        if branches:
            if self.num_paths > 1 and len(branches) != self.num_paths:
                raise DescriptorError("Multipath derivation paths have mismatched lengths")
            self.num_paths = len(branches)
        return branches

    def add(self, key, where: str, compressed: bool = False, xonly: bool = False) -> int:
        branches = self.check(key, where, compressed or xonly)
        k = key.key
        if not isinstance(k, bip32.HDKey):
            sec = _public(k).sec()
            fingerprint = key.origin.fingerprint if key.origin else _hash160(sec)[:4]
            path = key.origin.derivation if key.origin else []
            self.sources.append([_Key(xonly, _origin(fingerprint, path), sec)])
            return len(self.sources) - 1
        derivation = key.allowed_derivation.indexes if key.allowed_derivation else []
        wildcard = derivation[-1:] == [None]
        hardened = False
        if wildcard:
            hardened = self.hardened_wildcards[self.wildcards]
            self.wildcards += 1
            self.ranged = True
            if hardened and not k.is_private:
                raise DescriptorError(f"Cannot derive script without private keys: '{self.body}'")
        fingerprint = key.origin.fingerprint if key.origin else k.my_fingerprint
        prefix = key.origin.derivation if key.origin else []
        per_path = []
        for b in range(len(branches) if branches else 1):
            steps = [s[b] if isinstance(s, list) else s for s in (derivation[:-1] if wildcard else derivation)]
            child = k.derive(steps) if steps else k
            origin = _origin(fingerprint, prefix + steps)
            sec = child.get_public_key().sec()
            if wildcard:
                priv = child.key.secret if hardened else None
                per_path.append(_Key(xonly, origin, sec, child.chain_code, priv))
            else:
                per_path.append(_Key(xonly, origin, sec))
        self.sources.append(per_path)
        return len(self.sources) - 1


def _public(key) -> ec.PublicKey:
    return key.get_public_key() if isinstance(key, ec.PrivateKey) else key


def _origin(fingerprint: bytes, path: list[int]) -> str:
    return fingerprint.hex() + "".join(f"/{i - HARDENED}h" if i >= HARDENED else f"/{i}" for i in path)


# -- scripts ----------------------------------------------------------------------------------
def _p2sh(script: bytes) -> bytes:
    return b"\xa9\x14" + _hash160(script) + b"\x87"


def _p2wsh(script: bytes) -> bytes:
    return b"\x00\x20" + hashlib.sha256(script).digest()


def _p2pkh(sec: bytes) -> bytes:
    return b"\x76\xa9\x14" + _hash160(sec) + b"\x88\xac"


def _p2wpkh(sec: bytes) -> bytes:
    return b"\x00\x14" + _hash160(sec)


def _push(key: bytes) -> bytes:
    return bytes((len(key),)) + key          # keys are 33 or 65 bytes: a direct push


_TAG = {t: hashlib.sha256(t.encode()).digest() * 2 for t in ("TapLeaf", "TapBranch", "TapTweak")}


def _tagged(tag: str, data: bytes) -> bytes:
    return hashlib.sha256(_TAG[tag] + data).digest()


class _Path:
    """One multipath path of a descriptor in the fast shapes: its outputs at an index."""

    def __init__(self, shape, keys: list[_Key]):
        self.shape, self.keys = shape, keys

    def outputs(self, index: int) -> list[tuple[bytes, str]]:
        keys = [k.at(index) for k in self.keys]
        shape = self.shape
        kind = shape[0]
        if kind == "combo":
            sec, text = keys[shape[1]]
            out = [(_push(sec) + b"\xac", f"pk({text})"), (_p2pkh(sec), f"pkh({text})")]
            if len(sec) == 33:
                out += [(_p2wpkh(sec), f"wpkh({text})"), (_p2sh(_p2wpkh(sec)), f"sh(wpkh({text}))")]
            return out
        if kind == "rawtr":
            sec, text = keys[shape[1]]
            return [(b"\x51\x20" + sec[1:], f"rawtr({text})")]
        if kind == "tr":
            sec, text = keys[shape[1]]
            root, tree_text = b"", ""
            if shape[2] is not None:
                root, tree_text, _ = _tap(shape[2], keys)
                tree_text = "," + tree_text
            tweak = _tagged("TapTweak", sec[1:] + root)
            output = PublicKey(b"\x02" + sec[1:]).add(tweak).format()[1:]
            return [(b"\x51\x20" + output, f"tr({text}{tree_text})")]
        return [_script(shape, keys)]


def _script(node, keys) -> tuple[bytes, str]:
    kind = node[0]
    if kind == "sh":
        script, text = _script(node[1], keys)
        return _p2sh(script), f"sh({text})"
    if kind == "wsh":
        script, text = _script(node[1], keys)
        return _p2wsh(script), f"wsh({text})"
    if kind == "multi":
        _, m, members, is_sorted = node
        chosen = [keys[i] for i in members]
        if is_sorted:
            chosen.sort()
        script = push_number(m) + b"".join(_push(sec) for sec, _ in chosen) + push_number(len(chosen)) + b"\xae"
        return script, f"multi({m},{','.join(text for _, text in chosen)})"
    sec, text = keys[node[1]]
    if kind == "pk":
        return _push(sec) + b"\xac", f"pk({text})"
    if kind == "pkh":
        return _p2pkh(sec), f"pkh({text})"
    return _p2wpkh(sec), f"wpkh({text})"


def _tap(node, keys) -> tuple[bytes, str, bytes]:
    """(hash, text, smallest leaf script) of a script tree. Core infers a tree back from its leaves
    taken in script order, so the branch holding the smaller leaf script is written first."""
    if node[0] == "{":
        (h1, t1, s1), (h2, t2, s2) = _tap(node[1], keys), _tap(node[2], keys)
        text = f"{{{t1},{t2}}}" if s1 <= s2 else f"{{{t2},{t1}}}"
        return _tagged("TapBranch", min(h1, h2) + max(h1, h2)), text, min(s1, s2)
    if node[0] == "pk":
        sec, text = keys[node[1]]
        script, text = b"\x20" + sec[1:] + b"\xac", f"pk({text})"
    else:
        _, m, members, is_sorted = node
        chosen = [(keys[i][0][1:], keys[i][1]) for i in members]
        if is_sorted:
            chosen.sort()
        script = b"".join(b"\x20" + x + (b"\xac" if i == 0 else b"\xba") for i, (x, _) in enumerate(chosen))
        script += push_number(m) + b"\x9c"
        text = f"multi_a({m},{','.join(t for _, t in chosen)})"
    size = len(script)
    compact = bytes((size,)) if size < 0xFD else b"\xfd" + size.to_bytes(2, "little")
    return _tagged("TapLeaf", b"\xc0" + compact + script), text, script


# -- other miniscript: embit --------------------------------------------------------------------
def _embit_parsed(desc, keys: _Keys, body: str) -> _Parsed:
    for key in desc.keys:
        keys.check(key, "", compressed=bool(desc.wsh or desc.taproot))
    if any(keys.hardened_wildcards):
        raise DescriptorError("Hardened wildcards are supported only in pk, pkh, wpkh, combo, multi and tr "
                              f"descriptors: '{body}'")
    paths = [_EmbitPath(_fix_prefix(desc.branch(b))) for b in range(desc.num_branches)]
    return _Parsed(paths, desc.is_wildcard)


def _fix_prefix(desc):
    """Derive each key's fixed steps once (`xpub/0/*` -> the xpub at /0), so that each index costs one
    BIP-32 step per key; the origin grows by the same steps."""
    for key in desc.keys:
        derivation = key.allowed_derivation
        if derivation is None or derivation.indexes[-1:] != [None] or len(derivation.indexes) < 2:
            continue
        fixed = derivation.indexes[:-1]
        if key.origin is None:
            key.origin = KeyOrigin(key.key.my_fingerprint, [])
        key.key = key.key.derive(fixed)
        key.origin = KeyOrigin(key.origin.fingerprint, key.origin.derivation + fixed)
        key.allowed_derivation = AllowedDerivation([None])
    return desc


class _EmbitPath:
    def __init__(self, desc):
        self.desc = desc

    def outputs(self, index: int) -> list[tuple[bytes, str]]:
        derived = self.desc.derive(index)
        for key in derived.keys:     # write each key as Core reports it: origin and public key
            pub = key.get_public_key()
            if key.origin is None:
                key.origin = KeyOrigin(_hash160(pub.sec())[:4] if not key.is_extended else key.key.my_fingerprint, [])
            key.key, key.allowed_derivation, key.xonly_repr = pub, None, key.taproot
        spk = derived.script_pubkey().data
        if derived.taproot and derived.taptree:
            return [(spk, f"tr({derived.key},{_embit_tree(derived.taptree.tree)[0]})")]
        return [(spk, str(derived))]


def _embit_tree(tree) -> tuple[str, bytes]:
    if isinstance(tree, TapLeaf):
        ms = tree.miniscript
        if isinstance(ms, SortedmultiA):
            keys = sorted(ms.args[1:], key=lambda k: k.serialize())
            return f"multi_a({ms.args[0]},{','.join(map(str, keys))})", ms.compile()
        return str(ms), ms.compile()
    (t1, s1), (t2, s2) = _embit_tree(tree[0].tree), _embit_tree(tree[1].tree)
    return (f"{{{t1},{t2}}}" if s1 <= s2 else f"{{{t2},{t1}}}"), min(s1, s2)


# -- addresses and inferred descriptors -------------------------------------------------------
def _address_script(address: str, net: dict) -> bytes | None:
    """Core's DecodeDestination for one network: base58 P2PKH/P2SH, or segwit v0-v16 (bech32/bech32m)."""
    hrp = net["bech32"]
    if address.lower().startswith(hrp + "1"):
        version, program = bech32.decode(hrp, address)
        if version is None:
            return None
        return bytes((0x50 + version if version else 0, len(program))) + bytes(program)
    try:
        raw = base58.decode_check(address)
    except Exception:
        return None
    if len(raw) == 21 and raw[:1] == net["p2pkh"]:
        return b"\x76\xa9\x14" + raw[1:] + b"\x88\xac"
    if len(raw) == 21 and raw[:1] == net["p2sh"]:
        return b"\xa9\x14" + raw[1:] + b"\x87"
    return None


def _address_of(spk: bytes, net: dict) -> str | None:
    """Core's ExtractDestination, where re-encoding the destination gives back the same script."""
    if len(spk) == 25 and spk[:3] == b"\x76\xa9\x14" and spk[23:] == b"\x88\xac":
        return base58.encode_check(net["p2pkh"] + spk[3:23])
    if len(spk) == 23 and spk[:2] == b"\xa9\x14" and spk[22] == 0x87:
        return base58.encode_check(net["p2sh"] + spk[2:22])
    if 4 <= len(spk) <= 42 and spk[1] == len(spk) - 2 and (spk[0] == 0 or 0x51 <= spk[0] <= 0x60):
        version = spk[0] - 0x50 if spk[0] else 0
        if version == 0 and len(spk) not in (22, 34):
            return None
        return bech32.encode(net["bech32"], version, spk[2:])
    return None


def _valid_point(data: bytes) -> bool:
    if not ((len(data) == 33 and data[0] in (2, 3)) or (len(data) == 65 and data[0] == 4)):
        return False
    try:
        PublicKey(data)
    except Exception:
        return False
    return True


def _pushes(script: bytes) -> list[tuple[int, bytes | None]] | None:
    ops, i = [], 0
    while i < len(script):
        op = script[i]
        i += 1
        if 0 < op < 0x4C:
            if i + op > len(script):
                return None
            ops.append((op, script[i:i + op]))
            i += op
        elif op in (0x4C, 0x4D, 0x4E):
            return None         # multisig keys are never pushed this way
        else:
            ops.append((op, None))
    return ops


def infer_descriptor(spk: bytes, network: str = "regtest") -> str:
    """Core's InferDescriptor for a script with no key information (addr()/raw() scan objects,
    decodescript, gettxout...): pk(), multi(), rawtr(), addr() or raw(), with checksum."""
    return add_checksum(_infer(spk, NETWORKS[network]))


def _infer(spk: bytes, net: dict) -> str:
    if len(spk) in (35, 67) and spk[0] == len(spk) - 2 and spk[-1] == 0xAC and _valid_point(spk[1:-1]):
        return f"pk({spk[1:-1].hex()})"
    ops = _pushes(spk) if spk[-1:] == b"\xae" else None
    if ops and len(ops) >= 4 and ops[-1] == (0xAE, None) and 0x51 <= ops[0][0] <= 0x60 and 0x51 <= ops[-2][0] <= 0x60:
        m, n, keys = ops[0][0] - 0x50, ops[-2][0] - 0x50, [d for _, d in ops[1:-2]]
        if m <= n == len(keys) and all(k is not None and _valid_point(k) for k in keys):
            return f"multi({m},{','.join(k.hex() for k in keys)})"
    if len(spk) == 34 and spk[:2] == b"\x51\x20" and _valid_point(b"\x02" + spk[2:]):
        return f"rawtr({spk[2:].hex()})"
    address = _address_of(spk, net)
    if address is not None:
        return f"addr({address})"
    return f"raw({spk.hex()})"
