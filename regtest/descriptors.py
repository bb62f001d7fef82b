"""Output descriptors as Bitcoin Core's `scantxoutset`, `deriveaddresses` and `generatetodescriptor`
take them (BIP-380 checksums, ranges, BIP-389 multipath), and Core's inferred descriptor for a script.

Parsing and derivation are embit's; `addr()`, `raw()` and `pk()`, which embit's parser does not
take at the top level, are handled here.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from embit.descriptor import Descriptor
from embit.descriptor.arguments import AllowedDerivation, KeyOrigin

from . import script as S

DEFAULT_RANGE = 1000
MAX_RANGE_ITEMS = 1_000_000
_HEX = re.compile(r"^[0-9a-fA-F]*$")


class DescriptorError(ValueError):
    """A descriptor or scan object Core would refuse, with a message in Core's words."""


@dataclass(frozen=True)
class ScanObject:
    desc: str                        # without checksum
    range: tuple[int, int] | None    # inclusive, for ranged descriptors


_INPUT_CHARSET = "0123456789()[],'/*abcdefgh@:$%{}IJKLMNOPQRSTUVWXYZ&+-.;<=>?!^_|~ijklmnopqrstuvwxyzABCDEFGH`#\"\\ "
_CHECKSUM_CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_POSITION = {c: i for i, c in enumerate(_INPUT_CHARSET)}
_GENERATORS = (0xF5DEE51989, 0xA9FDCA3312, 0x1BAB10E32D, 0x3706B1677A, 0x644D626FFD)
_POLYMOD_TABLE = [0] * 32
for _top in range(32):
    for _bit in range(5):
        if (_top >> _bit) & 1:
            _POLYMOD_TABLE[_top] ^= _GENERATORS[_bit]


def descriptor_checksum(desc: str) -> str:
    """BIP-380 checksum; table-driven because every scan match reports a checksummed descriptor."""
    c, cls, count = 1, 0, 0
    table = _POLYMOD_TABLE
    for ch in desc:
        pos = _POSITION.get(ch)
        if pos is None:
            raise DescriptorError(f"Invalid character '{ch}' in descriptor")
        c = ((c & 0x7FFFFFFFF) << 5) ^ (pos & 31) ^ table[c >> 35]
        cls = cls * 3 + (pos >> 5)
        count += 1
        if count == 3:
            c = ((c & 0x7FFFFFFFF) << 5) ^ cls ^ table[c >> 35]
            cls = count = 0
    if count:
        c = ((c & 0x7FFFFFFFF) << 5) ^ cls ^ table[c >> 35]
    for _ in range(8):
        c = ((c & 0x7FFFFFFFF) << 5) ^ table[c >> 35]
    c ^= 1
    return "".join(_CHECKSUM_CHARSET[(c >> (5 * (7 - j))) & 31] for j in range(8))


def add_checksum(desc: str) -> str:
    return f"{desc}#{descriptor_checksum(desc)}"


def check_and_strip_checksum(desc: str, require: bool = False) -> str:
    body, sep, given = desc.partition("#")
    if not sep:
        if require:
            raise DescriptorError("Missing checksum")
        return desc
    if len(given) != 8:
        raise DescriptorError(f"Expected 8 character checksum, not {len(given)} characters")
    expected = descriptor_checksum(body)
    if given != expected:
        raise DescriptorError(f"Provided checksum '{given}' does not match computed checksum '{expected}'")
    return body


def _parse_range(value) -> tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool):
        begin, end = 0, value
    elif isinstance(value, list) and len(value) == 2 and all(isinstance(v, int) for v in value):
        begin, end = value
    else:
        raise DescriptorError("Range must be specified as end or as [begin,end]")
    if begin < 0:
        raise DescriptorError("Range should be greater or equal than 0")
    if end >= 1 << 31:
        raise DescriptorError("End of range is too high")
    if begin > end:
        raise DescriptorError("Range specified as [begin,end] must not have begin after end")
    if end - begin >= MAX_RANGE_ITEMS:
        raise DescriptorError("Range is too large")
    return begin, end


def parse_scan_objects(scanobjects: list) -> list[ScanObject]:
    """Core's scanobjects: descriptor strings, or {"desc": ..., "range": n | [begin, end]}."""
    result = []
    for item in scanobjects:
        given_range = None
        if isinstance(item, dict):
            if not isinstance(item.get("desc"), str):
                raise DescriptorError("Descriptor needs to be provided in scan object")
            desc, given_range = item["desc"], item.get("range")
        elif isinstance(item, str):
            desc = item
        else:
            raise DescriptorError("Scan object needs to be either a string or an object")
        body = check_and_strip_checksum(desc)
        ranged = _is_ranged(body)
        if ranged:
            rng = _parse_range(given_range) if given_range is not None else (0, DEFAULT_RANGE - 1)
        else:
            rng = None
        _parse(body)  # refuse bad descriptors now, with a message
        result.append(ScanObject(body, rng))
    return result


def _is_ranged(body: str) -> bool:
    return "*" in body


def _parse(body: str):
    """('addr'|'raw'|'pk', script) for the forms handled here, else an embit Descriptor."""
    name, _, rest = body.partition("(")
    if name in ("addr", "raw", "pk"):
        if not rest.endswith(")") or "(" in rest:
            raise DescriptorError(f"Invalid descriptor: {body}")
        arg = rest[:-1]
        if name == "addr":
            try:
                return "addr", S.address_to_script(arg)
            except ValueError:
                raise DescriptorError(f"Address is not valid") from None
        if name == "raw":
            if not _HEX.match(arg) or len(arg) % 2:
                raise DescriptorError("Raw script is not hex")
            return "raw", bytes.fromhex(arg)
        if not _HEX.match(arg) or len(arg) not in (66, 130):
            raise DescriptorError(f"pk(): key '{arg}' is not valid")
        key = bytes.fromhex(arg)
        return "pk", bytes((len(key),)) + key + bytes((S.OP_CHECKSIG,))
    try:
        desc = Descriptor.from_string(body)
    except Exception as e:
        raise DescriptorError(f"Invalid descriptor: {e}") from None
    for key in desc.keys:
        network = _key_network(key)
        if network is not None and network != "test":
            raise DescriptorError("Invalid descriptor: key is for another network than regtest")
    return desc


def _key_network(key) -> str | None:
    """'main' or 'test' for extended or WIF keys, None for plain public keys."""
    text = str(key).split("]")[-1]
    if text[:4] in ("xpub", "xprv") or (len(text) in (51, 52) and text[0] in "5KL"):
        return "main"
    if text[:4] in ("tpub", "tprv") or (len(text) in (51, 52) and text[0] in "9c"):
        return "test"
    return None


def _derived(desc, index: int | None, branch: int | None):
    if index is None and branch is None:
        return desc
    return desc.derive(index if index is not None else 0, branch_index=branch)


def _reported(derived) -> str:
    """Core reports each match with its derived keys written as public keys with their origins."""
    text = str(derived)
    for key in derived.keys:
        origin = f"[{key.origin}]" if key.origin else ""
        pub = key.get_public_key()
        pub_hex = (pub.xonly() if key.taproot else pub.sec()).hex()
        text = text.replace(str(key), origin + pub_hex)
    return add_checksum(text)


def describe(match) -> str:
    """The descriptor Core reports for a match found through `expand` (built only for matches)."""
    return match if isinstance(match, str) else _reported(match)


def iter_scripts(obj: ScanObject):
    """Yield (scriptPubKey, match) per path then index; `describe(match)` gives the reported descriptor."""
    parsed = _parse(obj.desc)
    if isinstance(parsed, tuple):
        kind, spk = parsed
        yield spk, add_checksum(obj.desc) if kind != "pk" else add_checksum(obj.desc)
        return
    branches = range(parsed.num_branches) if parsed.num_branches > 1 else [None]
    indexes = range(obj.range[0], obj.range[1] + 1) if obj.range else [None]
    for branch in branches:
        base = _fix_prefix(parsed.branch(branch) if branch is not None else parsed.branch(0))
        for index in indexes:
            derived = base.derive(index) if index is not None else base
            yield derived.script_pubkey().data, derived


def _fix_prefix(desc):
    """Derive each key's fixed steps (`xpub/0/*` -> the xpub at /0) once, so that every index costs
    one BIP-32 step per key instead of the whole path. The origin grows by the same steps."""
    for key in desc.keys:
        derivation = key.allowed_derivation
        if derivation is None or not hasattr(key.key, "derive") or derivation.indexes[-1:] != [None]:
            continue
        fixed = derivation.indexes[:-1]
        if not fixed or not all(isinstance(i, int) for i in fixed):
            continue
        key.key = key.key.derive(fixed)
        if key.origin is not None:
            key.origin = KeyOrigin(key.origin.fingerprint, key.origin.derivation + fixed)
        key.allowed_derivation = AllowedDerivation([None])
    return desc


def expand(obj: ScanObject, network: str = "regtest") -> dict:
    """scriptPubKey -> match, for every script the scan object describes."""
    return dict(iter_scripts(obj))


def expand_paths(obj: ScanObject) -> list[list[bytes]]:
    """Scripts in deriveaddresses order: one list per multipath path (one list when not multipath)."""
    scripts = [spk for spk, _ in iter_scripts(obj)]
    parsed = _parse(obj.desc)
    paths = 1 if isinstance(parsed, tuple) else max(parsed.num_branches, 1)
    size = len(scripts) // paths
    return [scripts[i * size:(i + 1) * size] for i in range(paths)]


def infer_descriptor(spk: bytes) -> str:
    """Core's InferDescriptor for a script with no key information: addr(), pk(), multi() or raw()."""
    kind = S.classify(spk)
    if kind == "pubkey":
        return add_checksum(f"pk({spk[1:-1].hex()})")
    if kind == "multisig":
        m, _ = S.multisig_counts(spk)
        keys = [data.hex() for op, data in S.iter_ops(spk) if data is not None]
        return add_checksum(f"multi({m},{','.join(keys)})")
    address = S.address_of(spk)
    if address is not None:
        return add_checksum(f"addr({address})")
    return add_checksum(f"raw({spk.hex()})")
