"""Extended public keys as signatories bring them: xpub/tpub or SLIP-132 (ypub, zpub, Zpub, vpub, Vpub …),
with a key origin `[fingerprint/path]`. Every key is checked and stored in one canonical form:
`[fingerprint/path-with-h]xpub-or-tpub`, the form descriptors use.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from embit import base58
from embit.bip32 import HDKey
from embit.networks import NETWORKS

HARDENED = 0x80000000

# SLIP-132 version bytes -> (network family, standard public version)
_PUBLIC_VERSIONS: dict[bytes, str] = {}
for _family in ("main", "test"):
    for _name in ("xpub", "ypub", "zpub", "Ypub", "Zpub"):
        _PUBLIC_VERSIONS[NETWORKS[_family][_name]] = _family
_PRIVATE_VERSIONS = {NETWORKS[f][n] for f in ("main", "test") for n in ("xprv", "yprv", "zprv", "Yprv", "Zprv")}

NETWORK_FAMILY = {"main": "main", "mainnet": "main", "bitcoin": "main", "test": "test", "testnet": "test",
                  "testnet4": "test", "signet": "test", "regtest": "test"}

_ORIGIN = re.compile(r"^\[([0-9a-fA-F]{8})((?:/[0-9]+['hH]?)*)\](.+)$")


class KeyImportError(ValueError):
    """A key that cannot be accepted; the message says why in words a signatory can act on."""


@dataclass(frozen=True)
class ExtendedKey:
    fingerprint: str        # master fingerprint, 8 lowercase hex
    path: tuple[int, ...]   # derivation from the master to this key
    xpub: str               # base58 with the network's standard xpub/tpub version
    network: str            # "main" or "test" (testnet, signet and regtest share test versions)

    @property
    def path_str(self) -> str:
        return "m" + "".join(f"/{i & ~HARDENED}h" if i & HARDENED else f"/{i}" for i in self.path)

    @property
    def origin(self) -> str:
        return f"[{self.fingerprint}{self.path_str[1:]}]"

    def __str__(self) -> str:
        return f"{self.origin}{self.xpub}"

    @property
    def hdkey(self) -> HDKey:
        return HDKey.from_base58(self.xpub)


def parse_path(text: str) -> tuple[int, ...]:
    text = text.strip()
    if text.startswith("m"):
        text = text[1:]
    out = []
    for part in filter(None, text.split("/")):
        hardened = part[-1] in "'hH"
        number = part[:-1] if hardened else part
        if not number.isdigit() or int(number) >= HARDENED:
            raise KeyImportError(f"bad derivation step {part!r} in path")
        out.append(int(number) | (HARDENED if hardened else 0))
    return tuple(out)


def parse_key(text: str, *, network: str = "regtest", fingerprint: str | None = None,
              path: str | None = None) -> ExtendedKey:
    """Parse `[fp/path]xpub` (or a bare key with fingerprint and path given separately) and check it
    against the network and its own depth, child number and parent fingerprint."""
    family = NETWORK_FAMILY.get(network)
    if family is None:
        raise KeyImportError(f"unknown network {network!r}")
    text = text.strip()
    m = _ORIGIN.match(text)
    if m:
        fp, path_text, body = m.group(1).lower(), m.group(2), m.group(3)
        if fingerprint is not None and fingerprint.lower() != fp:
            raise KeyImportError(f"fingerprint {fingerprint} contradicts the key origin [{fp}]")
        steps = parse_path(path_text)
    else:
        if fingerprint is None or path is None:
            raise KeyImportError("a key needs its origin: [fingerprint/derivation/path]xpub")
        if not re.fullmatch(r"[0-9a-fA-F]{8}", fingerprint):
            raise KeyImportError(f"fingerprint {fingerprint!r} is not 8 hex characters")
        fp, body, steps = fingerprint.lower(), text, parse_path(path)
    if "/" in body:
        raise KeyImportError("the key must not carry derivation steps after it here; give the account-level key")
    try:
        raw = base58.decode_check(body)
    except Exception:
        raise KeyImportError("not a valid extended public key (base58 checksum failed)") from None
    if len(raw) != 78:
        raise KeyImportError("not an extended key (wrong length)")
    version = raw[:4]
    if version in _PRIVATE_VERSIONS:
        raise KeyImportError("this is a private key: only extended public keys may leave a signing device")
    key_family = _PUBLIC_VERSIONS.get(version)
    if key_family is None:
        raise KeyImportError("unknown extended key version (not xpub/tpub or SLIP-132)")
    if key_family != family:
        have = "mainnet" if key_family == "main" else "testnet/signet/regtest"
        raise KeyImportError(f"key is for {have}, but this policy is on {network}")
    depth, parent_fp, child = raw[4], raw[5:9].hex(), int.from_bytes(raw[9:13], "big")
    if depth != len(steps):
        raise KeyImportError(f"key origin path has {len(steps)} steps but the key's depth is {depth}")
    if steps and steps[-1] != child:
        raise KeyImportError("key origin path does not end with the key's own child number")
    if depth == 0 and (child != 0 or parent_fp != "00000000"):
        raise KeyImportError("a master key must have child number 0 and no parent")
    if depth == 1 and parent_fp != fp:
        raise KeyImportError(f"key's parent fingerprint {parent_fp} contradicts the origin fingerprint {fp}")
    if depth == 0 and fp != HDKey.from_base58(base58.encode_check(NETWORKS[family]["xpub"] + raw[4:])).my_fingerprint.hex():
        raise KeyImportError("origin fingerprint is not this master key's fingerprint")
    if raw[45] not in (2, 3):
        raise KeyImportError("extended key does not hold a valid compressed public key")
    canonical = base58.encode_check(NETWORKS[family]["xpub"] + raw[4:])
    try:
        HDKey.from_base58(canonical)
    except Exception:
        raise KeyImportError("extended key does not hold a valid public key") from None
    return ExtendedKey(fp, steps, canonical, family)
