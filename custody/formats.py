"""Policies in the wallet files users bring and take away.

  core      Bitcoin Core `importdescriptors` requests (receive and change, active, ranged)
  bsms      BIP-129 descriptor record: BSMS 1.0, descriptor, path restrictions, first address
  coldcard  Coldcard multisig setup file (Name / Policy / Derivation / Format, FINGERPRINT: xpub)
  sparrow   Sparrow's output-descriptor export (BIP-389 descriptor, then receive and change)
  specter   Specter Desktop wallet backup JSON (label, blockheight, descriptor, devices)
  caravan   Caravan wallet configuration JSON (quorum, extendedPublicKeys with xfp and bip32Path)

Every import goes through custody.policies, so each file meets the same rules as a policy made by
hand; a BSMS record's first address is re-derived and must match.
"""
from __future__ import annotations

import json
import re

from embit.networks import NETWORKS

from .derive import derive_addresses
from .keys import KeyImportError, parse_key
from .policies import PolicyError, PolicySpec, build_policy, parse_policy

FORMATS = ("core", "bsms", "coldcard", "sparrow", "specter", "caravan")
_CARAVAN_NETWORK = {"main": "mainnet", "test": "testnet", "testnet4": "testnet", "signet": "signet",
                    "regtest": "regtest"}


class FormatError(ValueError):
    """A wallet file that cannot be imported or a policy a format cannot express."""


def export_policy(spec: PolicySpec, fmt: str, *, name: str = "custody") -> str:
    if fmt not in FORMATS:
        raise FormatError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    return _EXPORTERS[fmt](spec, name)


def import_policy(text: str, fmt: str | None = None, *, network: str = "regtest") -> tuple[PolicySpec, str]:
    """(policy, wallet name) from a file's text; the format is detected when not given."""
    fmt = fmt or detect_format(text)
    if fmt not in FORMATS:
        raise FormatError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    try:
        return _IMPORTERS[fmt](text, network)
    except (PolicyError, KeyImportError) as e:
        raise FormatError(str(e)) from None
    except (KeyError, TypeError, IndexError, AttributeError):
        raise FormatError(f"not a valid {fmt} file: a required field is missing or of the wrong type") from None


def detect_format(text: str) -> str:
    stripped = text.strip()
    if stripped.startswith("BSMS "):
        return "bsms"
    if stripped.startswith(("[", "{")):
        try:
            data = json.loads(stripped)
        except ValueError:
            raise FormatError("the file looks like JSON but does not parse") from None
        if isinstance(data, list) or (isinstance(data, dict) and "desc" in data):
            return "core"
        if isinstance(data, dict) and "extendedPublicKeys" in data:
            return "caravan"
        if isinstance(data, dict) and "descriptor" in data:
            return "specter"
        raise FormatError("JSON file of an unknown wallet format")
    if re.search(r"^\s*Policy:\s*\d+\s*of\s*\d+", stripped, re.M | re.I):
        return "coldcard"
    if re.search(r"^(wsh|tr|sh)\(", stripped, re.M):
        return "sparrow"
    raise FormatError("cannot tell the file's format; give it explicitly")


# -- Bitcoin Core ------------------------------------------------------------------------------
def _export_core(spec: PolicySpec, name: str) -> str:
    requests = [{"desc": spec.descriptor(0), "active": True, "range": [0, 999], "timestamp": "now",
                 "internal": False, "label": name},
                {"desc": spec.descriptor(1), "active": True, "range": [0, 999], "timestamp": "now",
                 "internal": True}]
    return json.dumps(requests, indent=2) + "\n"


def _import_core(text: str, network: str) -> tuple[PolicySpec, str]:
    try:
        data = json.loads(text)
    except ValueError:
        raise FormatError("not JSON: expected Bitcoin Core importdescriptors requests") from None
    requests = data if isinstance(data, list) else [data]
    specs, name = [], "imported"
    for request in requests:
        if not isinstance(request, dict) or not isinstance(request.get("desc"), str):
            raise FormatError("each importdescriptors request needs a \"desc\" string")
        specs.append(parse_policy(request["desc"], network=network))
        name = request.get("label") or name
    if any(s != specs[0] for s in specs):
        raise FormatError("the receive and change descriptors describe different policies")
    return specs[0], name


# -- BIP-129 BSMS --------------------------------------------------------------------------------
def _export_bsms(spec: PolicySpec, name: str) -> str:
    body = re.sub(r"(\d)h", r"\1'", spec.descriptor().split("#")[0].replace("/<0;1>/*", "/**"))  # as BIP-129 writes
    first = derive_addresses(spec, 0, 0, 0)[0]
    return f"BSMS 1.0\n{body}\n/0/*,/1/*\n{first}\n"


def _import_bsms(text: str, network: str) -> tuple[PolicySpec, str]:
    lines = [line.strip() for line in text.strip().splitlines()]
    if len(lines) != 4 or lines[0] != "BSMS 1.0":
        raise FormatError("a BSMS descriptor record has 4 lines: BSMS 1.0, descriptor, path restrictions, first address")
    descriptor, restrictions, first = lines[1], lines[2], lines[3]
    if restrictions not in ("/0/*,/1/*", "No path restrictions"):
        raise FormatError(f"unsupported BSMS path restrictions {restrictions!r}")
    if restrictions == "No path restrictions" or "/**" not in descriptor:
        raise FormatError("this BSMS record has no /** derivation: a custody policy needs extended keys")
    spec = parse_policy(descriptor.replace("/**", "/<0;1>/*").split("#")[0], network=network)
    if "#" in descriptor:   # the record's own checksum covers the /** form
        from .policies import check_and_strip_checksum
        check_and_strip_checksum(descriptor)
    derived = derive_addresses(spec, 0, 0, 0)[0]
    if derived != first:
        raise FormatError(f"BSMS first address {first} does not match the descriptor's first address {derived}: "
                          "the record was altered or belongs to another wallet")
    return spec, "bsms"


# -- Coldcard ----------------------------------------------------------------------------------
def _only_wsh_sortedmulti(spec: PolicySpec, fmt: str) -> None:
    if spec.kind != "wsh-sortedmulti":
        raise FormatError(f"{fmt} files describe wsh(sortedmulti) policies only, not {spec.kind}")


def _export_coldcard(spec: PolicySpec, name: str) -> str:
    _only_wsh_sortedmulti(spec, "coldcard")
    lines = [f"# Coldcard multisig setup file (exported by custody-toolkit)", f"Name: {name[:20]}",
             f"Policy: {spec.threshold} of {len(spec.keys)}", "Format: P2WSH", ""]
    for key in spec.keys:
        lines += [f"Derivation: {key.path_str.replace('h', chr(39))}", f"{key.fingerprint.upper()}: {key.xpub}", ""]
    return "\n".join(lines)


def _import_coldcard(text: str, network: str) -> tuple[PolicySpec, str]:
    name, threshold, total, derivation, fmt = "coldcard", None, None, None, "P2WSH"
    keys = []
    for raw in text.splitlines():
        line = raw.strip()
        comment = re.match(r"#\s*derivation:\s*(\S+)", line, re.I)
        if comment:
            derivation = comment.group(1)
            continue
        if not line or line.startswith("#"):
            continue
        label, sep, value = line.partition(":")
        if not sep:
            raise FormatError(f"coldcard line {line[:30]!r} is not 'Label: value'")
        label, value = label.strip(), value.strip()
        lower = label.lower()
        if lower == "name":
            name = value
        elif lower == "policy":
            m = re.fullmatch(r"(\d+)\s*of\s*(\d+)", value, re.I)
            if not m:
                raise FormatError(f"coldcard policy {value!r} is not 'M of N'")
            threshold, total = int(m.group(1)), int(m.group(2))
        elif lower == "derivation":
            derivation = value
        elif lower == "format":
            fmt = value.upper()
        elif re.fullmatch(r"[0-9a-fA-F]{8}", label):
            if derivation is None:
                raise FormatError(f"coldcard key {label} comes before any Derivation line")
            keys.append(parse_key(value, network=network, fingerprint=label, path=derivation))
        else:
            raise FormatError(f"coldcard file has an unknown line {label!r}")
    if fmt != "P2WSH":
        raise FormatError(f"coldcard format {fmt} is not supported: custody policies are native segwit (P2WSH)")
    if threshold is None:
        raise FormatError("coldcard file has no 'Policy: M of N' line")
    if total != len(keys):
        raise FormatError(f"coldcard file says {total} keys but lists {len(keys)}")
    return build_policy("wsh-sortedmulti", threshold, keys, network=network), name


# -- Sparrow -----------------------------------------------------------------------------------
def _export_sparrow(spec: PolicySpec, name: str) -> str:
    return (f"# Receive and change descriptor (BIP389):\n{spec.descriptor()}\n\n"
            f"# Receive descriptor (Bitcoin Core):\n{spec.descriptor(0)}\n\n"
            f"# Change descriptor (Bitcoin Core):\n{spec.descriptor(1)}\n")


def _import_sparrow(text: str, network: str) -> tuple[PolicySpec, str]:
    descriptors = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    if not descriptors:
        raise FormatError("no descriptor in the Sparrow export")
    specs = [parse_policy(d, network=network) for d in descriptors]
    if any(s != specs[0] for s in specs):
        raise FormatError("the descriptors in the Sparrow export describe different policies")
    return specs[0], "sparrow"


# -- Specter -----------------------------------------------------------------------------------
def _export_specter(spec: PolicySpec, name: str) -> str:
    return json.dumps({"label": name, "blockheight": 0, "descriptor": spec.descriptor(0),
                       "devices": [{"type": "other", "label": f"{k.fingerprint}"} for k in spec.all_keys]},
                      indent=2) + "\n"


def _import_specter(text: str, network: str) -> tuple[PolicySpec, str]:
    try:
        data = json.loads(text)
    except ValueError:
        raise FormatError("not JSON: expected a Specter wallet backup") from None
    spec = parse_policy(data["descriptor"], network=network)
    if data.get("change_descriptor") and parse_policy(data["change_descriptor"], network=network) != spec:
        raise FormatError("Specter backup's change descriptor describes another policy")
    return spec, str(data.get("label") or "specter")


# -- Caravan -----------------------------------------------------------------------------------
def _export_caravan(spec: PolicySpec, name: str) -> str:
    _only_wsh_sortedmulti(spec, "caravan")
    return json.dumps({
        "name": name, "addressType": "P2WSH", "network": _CARAVAN_NETWORK[spec.network],
        "client": {"type": "public"},
        "quorum": {"requiredSigners": spec.threshold, "totalSigners": len(spec.keys)},
        "extendedPublicKeys": [{"name": f"key {i + 1}", "bip32Path": k.path_str.replace("h", "'"), "xpub": k.xpub,
                                "xfp": k.fingerprint, "method": "text"} for i, k in enumerate(spec.keys)],
        "startingAddressIndex": 0}, indent=2) + "\n"


def _import_caravan(text: str, network: str) -> tuple[PolicySpec, str]:
    try:
        data = json.loads(text)
    except ValueError:
        raise FormatError("not JSON: expected a Caravan wallet configuration") from None
    if data.get("addressType") != "P2WSH":
        raise FormatError(f"Caravan address type {data.get('addressType')!r} is not supported; custody policies are P2WSH")
    if data.get("network") != _CARAVAN_NETWORK[network]:
        raise FormatError(f"Caravan wallet is for {data.get('network')}, not {_CARAVAN_NETWORK[network]}")
    quorum = data["quorum"]
    keys = [parse_key(k["xpub"], network=network, fingerprint=k["xfp"], path=k["bip32Path"])
            for k in data["extendedPublicKeys"]]
    if quorum["totalSigners"] != len(keys):
        raise FormatError(f"Caravan quorum says {quorum['totalSigners']} signers but lists {len(keys)} keys")
    return build_policy("wsh-sortedmulti", int(quorum["requiredSigners"]), keys, network=network), str(data.get("name") or "caravan")


_EXPORTERS = {"core": _export_core, "bsms": _export_bsms, "coldcard": _export_coldcard, "sparrow": _export_sparrow,
              "specter": _export_specter, "caravan": _export_caravan}
_IMPORTERS = {"core": _import_core, "bsms": _import_bsms, "coldcard": _import_coldcard, "sparrow": _import_sparrow,
              "specter": _import_specter, "caravan": _import_caravan}
