"""Policies in the wallet files users bring and take away.

  core      Bitcoin Core `importdescriptors` requests: receive (/0/*) and change (/1/*), active, ranged.
            Import also takes one request, `listdescriptors` output, or a bare (multipath) descriptor.
  bsms      BIP-129 descriptor record: `BSMS 1.0`, descriptor (`/**` template or `<0;1>/*`), path
            restrictions, first address. The first address is re-derived and must match; encrypted
            (.dat) records are read when the session token is given.
  coldcard  Coldcard multisig setup file (Name / Policy / Format / Derivation, `XFP: xpub` lines,
            per-key `# derivation:` comments too). wsh(sortedmulti) only, as on the device.
  sparrow   Sparrow's "Output Descriptor" text export (any descriptor text reads the same way).
            Sparrow has no JSON wallet export of its own; its wallet file is an (encrypted) database.
  specter   Specter Desktop wallet backup JSON (label, blockheight, receive descriptor, devices);
            import also takes Specter's wallet file (recv_descriptor / change_descriptor).
  caravan   Caravan wallet configuration JSON (quorum, extendedPublicKeys with xfp and bip32Path).

Exports refuse a policy the receiving tool would read differently, rather than hand it a file that
derives other addresses: Coldcard, Caravan and Sparrow know only sorted multisig.
Every import goes through custody.bitcoin.policies, so a file meets the same rules as a policy made by hand.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import re

from custody.bitcoin.keys import KeyImportError, parse_key, parse_path
from custody.json_depth import check_json_depth
from custody.bitcoin.policies import (build_policy, check_and_strip_checksum, NETWORK_PARAMS, parse_policy,
                                      PolicyError, PolicySpec)

FORMATS = ("core", "bsms", "coldcard", "sparrow", "specter", "caravan")
_NETWORK_NAMES = {"main": "main", "mainnet": "main", "bitcoin": "main", "test": "test", "testnet": "test",
                  "testnet3": "test", "testnet4": "testnet4", "signet": "signet", "regtest": "regtest"}
_CARAVAN_NETWORK = {"main": "mainnet", "test": "testnet", "testnet4": "testnet", "signet": "signet",
                    "regtest": "regtest"}
_BRANCHES = ("/0/*", "/1/*", "/<0;1>/*")
_KEY_SUFFIX = re.compile(r"\][1-9A-HJ-NP-Za-km-z]{100,}((?:/[^,)\s]*)?)")   # what follows each [origin]xpub
_ENCRYPTED = re.compile(r"(?:[0-9a-fA-F]{2}){48,}")                          # BIP-129 MAC || ciphertext, hex
COLDCARD_MAX_SIGNERS = 15


class FormatError(ValueError):
    """A wallet file that cannot be imported, or a policy a format cannot carry; one line saying why."""


def export_policy(spec: PolicySpec, fmt: str, *, name: str = "custody") -> str:
    """The file text of `spec` in format `fmt`."""
    if fmt not in FORMATS:
        raise FormatError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    return _EXPORTERS[fmt](spec, name)


def import_policy(text: str, fmt: str | None = None, *, network: str = "regtest",
                  token: str | None = None) -> tuple[PolicySpec, str]:
    """(policy, wallet name) from a file's text; the format is detected when not given. `token` is the
    BIP-129 session token (hex or decimal) that decrypts an encrypted BSMS record."""
    fmt = fmt or detect_format(text)
    if fmt not in FORMATS:
        raise FormatError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    net = _NETWORK_NAMES.get(str(network).lower())
    if net is None:
        raise FormatError(f"unknown network {network!r}; choose main, test, testnet4, signet or regtest")
    try:
        return _import_bsms(text, net, token) if fmt == "bsms" else _IMPORTERS[fmt](text, net)
    except FormatError:
        raise
    except (PolicyError, KeyImportError) as e:
        raise FormatError(" ".join(str(e).split())) from None
    except ValueError as e:                     # a parser below us (embit) refusing the text
        raise FormatError(f"not a valid {fmt} file: {' '.join(str(e).split())}") from None


def detect_format(text: str) -> str:
    stripped = text.strip()
    if not stripped:
        raise FormatError("the file is empty")
    if stripped.startswith("BSMS") or _ENCRYPTED.fullmatch("".join(stripped.split())):
        return "bsms"
    if stripped[0] in "[{":
        data = _json(stripped, "a Bitcoin Core, Specter or Caravan file")
        if isinstance(data, list) or (isinstance(data, dict) and ("desc" in data or "descriptors" in data)):
            return "core"
        if isinstance(data, dict) and "extendedPublicKeys" in data:
            return "caravan"
        if isinstance(data, dict) and ("descriptor" in data or "recv_descriptor" in data):
            return "specter"
        raise FormatError("a JSON file of no known wallet format (expected Bitcoin Core, Specter or Caravan)")
    lines = [line.strip() for line in stripped.splitlines() if line.strip() and not line.strip().startswith("#")]
    if any(re.match(r"(name|policy|format|derivation)\s*:|[0-9a-fA-F]{8}\s*:\s*\w+pub", l, re.I) for l in lines):
        return "coldcard"
    if any(re.match(r"[a-z_]+\(", line) for line in lines):
        return "sparrow"
    raise FormatError(f"cannot tell the file's format; give it explicitly (one of {', '.join(FORMATS)})")


# -- shared ------------------------------------------------------------------------------------
def _json(text: str, what: str):
    try:
        check_json_depth(text, what="the file")   # no wallet file nests more than a few levels
    except ValueError as e:
        raise FormatError(f"{e}: expected {what}") from None
    try:
        return json.loads(text)
    except ValueError as e:
        raise FormatError(f"not valid JSON ({e.msg}, line {e.lineno}): expected {what}") from None
    except RecursionError:
        raise FormatError(f"the file nests too deeply: expected {what}") from None


def _get(data, key: str, kind: type, where: str):
    value = data.get(key) if isinstance(data, dict) else None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        what = {str: "text", int: "a number", list: "a list", dict: "an object"}[kind]
        raise FormatError(f"{where} needs \"{key}\" ({what})")
    return value


def _network_of(spec: PolicySpec) -> str:
    network = _NETWORK_NAMES.get(str(spec.network).lower())
    if network is None:
        raise FormatError(f"the policy's network {spec.network!r} is unknown")
    return network


def _descriptor(text: str, network: str) -> tuple[PolicySpec, str]:
    """A policy from one descriptor, and the branch every key derives (/0/*, /1/* or /<0;1>/*)."""
    text = "".join(text.split())                   # a descriptor may arrive wrapped over lines
    if not re.match(r"[a-z_]+\(", text):
        raise FormatError(f"{text[:24]!r} is not an output descriptor")
    body = check_and_strip_checksum(text)
    if body.startswith("sh("):
        raise FormatError("nested segwit (sh(...)) policies are not supported: custody policies are wsh or tr")
    suffixes = set(_KEY_SUFFIX.findall(body))
    if not suffixes:
        raise FormatError("the descriptor has no extended public keys with origins ([fingerprint/path]xpub): "
                          "a custody policy derives fresh addresses from them")
    if len(suffixes) > 1:
        raise FormatError(f"the descriptor's keys derive different branches ({', '.join(sorted(suffixes))}); "
                          "every key must derive the same one")
    suffix = suffixes.pop()
    if suffix not in _BRANCHES:
        raise FormatError(f"keys derive {suffix or 'no path'}: custody policies derive /<0;1>/* (or /0/* and /1/*)")
    return parse_policy(text, network=network), suffix


def _same_policy(specs: list[PolicySpec], what: str) -> PolicySpec:
    if not specs:
        raise FormatError(f"no descriptor in the {what}")
    if any(s != specs[0] for s in specs):
        raise FormatError(f"the descriptors in the {what} describe different policies")
    return specs[0]


def _only_sortedmulti(spec: PolicySpec, tool: str, why: str) -> None:
    if spec.kind != "wsh-sortedmulti":
        raise FormatError(f"{tool} carries wsh(sortedmulti) policies only, not {spec.kind}: {why}; "
                          "export it as core or bsms")


def _apostrophes(descriptor: str) -> str:
    """Hardened steps as `'` inside key origins only (an `h` elsewhere is part of a base58 key)."""
    return re.sub(r"\[[^\]]*\]", lambda m: m.group(0).replace("h", "'"), descriptor)


# -- Bitcoin Core --------------------------------------------------------------------------------
def _export_core(spec: PolicySpec, name: str) -> str:
    """Two single-branch requests rather than one multipath one: every Core with descriptor wallets takes
    them, and they say which branch is change. Core refuses a label on an internal descriptor."""
    requests = [{"desc": spec.descriptor(0), "active": True, "range": [0, 999], "timestamp": "now",
                 "internal": False, "label": name},
                {"desc": spec.descriptor(1), "active": True, "range": [0, 999], "timestamp": "now",
                 "internal": True}]
    return json.dumps(requests, indent=2) + "\n"


def _import_core(text: str, network: str) -> tuple[PolicySpec, str]:
    stripped, name = text.strip(), "core"
    if stripped[:1] not in ("[", "{"):             # a bare descriptor, as getdescriptorinfo prints it
        requests = [{"desc": stripped}]
    else:
        data = _json(stripped, "Bitcoin Core importdescriptors requests")
        if isinstance(data, dict) and "descriptors" in data:          # listdescriptors output
            requests = _get(data, "descriptors", list, "listdescriptors output")
            name = data["wallet_name"] if isinstance(data.get("wallet_name"), str) and data["wallet_name"] else name
        else:
            requests = data if isinstance(data, list) else [data]
    specs = []
    for i, request in enumerate(requests, 1):
        spec, branch = _descriptor(_get(request, "desc", str, f"request {i}"), network)
        internal, label = request.get("internal"), request.get("label")
        if branch == "/<0;1>/*":
            if "internal" in request or label:
                raise FormatError(f"request {i}: Core refuses 'internal' or a label on a multipath descriptor")
        elif (branch == "/1/*") != bool(internal):
            raise FormatError(f"request {i}: a {'change' if internal else 'receive'} request must derive "
                              f"{'/1/*' if internal else '/0/*'}, not {branch}")
        if internal and label:
            raise FormatError(f"request {i}: Core refuses a label on an internal (change) descriptor")
        if isinstance(label, str) and label:
            name = label
        specs.append(spec)
    return _same_policy(specs, "Bitcoin Core file"), name


# -- BIP-129 BSMS ------------------------------------------------------------------------------
def _export_bsms(spec: PolicySpec, name: str) -> str:
    """As BIP-129's own vectors write it: a `/**` template with `'`, no checksum, then the first address."""
    template = _apostrophes(spec.descriptor().split("#")[0].replace("/<0;1>/*", "/**"))
    return f"BSMS 1.0\n{template}\n/0/*,/1/*\n{_first_address(spec)}\n"


def _first_address(spec: PolicySpec) -> str:
    return spec.embit(0).derive(0).script_pubkey().address(NETWORK_PARAMS[_network_of(spec)])


def _import_bsms(text: str, network: str, token: str | None = None) -> tuple[PolicySpec, str]:
    record = text.strip()
    if _ENCRYPTED.fullmatch("".join(record.split())):
        if token is None:
            raise FormatError("this is an encrypted BSMS record: give the session token (hex or decimal) to read it")
        record = _bsms_decrypt("".join(record.split()), token).strip()
    lines = [line.strip() for line in record.splitlines()]
    if not lines or not lines[0].startswith("BSMS"):
        raise FormatError("not a BSMS record: the first line must be 'BSMS 1.0'")
    if lines[0] != "BSMS 1.0":
        raise FormatError(f"unsupported BSMS version {lines[0][4:].strip()!r}; this reads BSMS 1.0")
    if len(lines) >= 3 and lines[2].startswith("["):
        raise FormatError("this is a BSMS key record (one signer's key, round 1), not a wallet descriptor record")
    if len(lines) != 4:
        raise FormatError("a BSMS descriptor record has 4 lines: BSMS 1.0, descriptor, path restrictions, first address")
    descriptor, first = lines[1], lines[3]
    restrictions = "none" if lines[2].lower() == "no path restrictions" else lines[2].replace(" ", "")
    body = check_and_strip_checksum(descriptor)    # a record's checksum covers the line as written, /** and all
    if restrictions not in ("/0/*,/1/*", "none"):
        raise FormatError(f"unsupported BSMS path restrictions {lines[2]!r}: custody policies use /0/*,/1/*")
    if "/**" in body:
        if restrictions != "/0/*,/1/*":
            raise FormatError("a BSMS /** template needs the path restrictions /0/*,/1/*")
        body = body.replace("/**", "/<0;1>/*")
    spec, branch = _descriptor(body, network)
    if branch != "/<0;1>/*":
        raise FormatError(f"this BSMS record describes one branch ({branch}) only: a custody policy needs "
                          "receive and change (/** with /0/*,/1/*, or /<0;1>/*)")
    expected = _first_address(spec)
    if first != expected:
        hrp = first.lower().rpartition("1")[0]
        if hrp in ("bc", "tb", "bcrt") and hrp != expected.rpartition("1")[0]:
            raise FormatError(f"BSMS first address {first} is for another network than {network}")
        raise FormatError(f"BSMS first address {first} does not match the descriptor's first address {expected}: "
                          "the record was altered or belongs to another wallet")
    return spec, "bsms"


def _bsms_decrypt(data: str, token: str) -> str:
    """BIP-129 encryption: key = PBKDF2-SHA512("No SPOF", salt=TOKEN, 2048), AES-256-CTR with IV = MAC[:16],
    MAC = HMAC-SHA256(SHA256(key), hex TOKEN || plaintext)."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
    token = token.strip()
    if re.fullmatch(r"(?:[0-9a-fA-F]{16}){1,2}", token):
        raw = bytes.fromhex(token)
    elif token.isdigit() and int(token) < 1 << 128:
        raw = int(token).to_bytes(8 if int(token) < 1 << 64 else 16, "big")
    else:
        raise FormatError("a BSMS token is 16 or 32 hex digits, or its decimal number")
    blob = bytes.fromhex(data)
    mac, ciphertext = blob[:32], blob[32:]
    key = hashlib.pbkdf2_hmac("sha512", b"No SPOF", raw, 2048, 32)
    decryptor = Cipher(algorithms.AES(key), modes.CTR(mac[:16])).decryptor()
    plaintext = decryptor.update(ciphertext) + decryptor.finalize()
    check = hmac.new(hashlib.sha256(key).digest(), raw.hex().encode() + plaintext, "sha256").digest()
    if not hmac.compare_digest(check, mac):
        raise FormatError("the encrypted BSMS record does not authenticate with this token: wrong token or altered file")
    return plaintext.decode("utf-8", "replace")


# -- Coldcard ----------------------------------------------------------------------------------
_COLDCARD_FORMATS = {"p2sh": "P2SH", "p2wsh": "P2WSH", "p2sh-p2wsh": "P2SH-P2WSH", "p2wsh-p2sh": "P2SH-P2WSH"}


def _export_coldcard(spec: PolicySpec, name: str) -> str:
    """As the device writes it: a Derivation line before each run of keys sharing it, XFP in capitals."""
    _only_sortedmulti(spec, "A Coldcard file", "the device always sorts the keys (BIP-67)")
    if len(spec.keys) > COLDCARD_MAX_SIGNERS:
        raise FormatError(f"Coldcard takes at most {COLDCARD_MAX_SIGNERS} co-signers, not {len(spec.keys)}")
    safe = "".join(c if 32 <= ord(c) < 127 and c != "#" else "_" for c in name)[:20].strip() or "custody"
    lines = ["# Coldcard Multisig setup file (exported by custody-toolkit)", "#", f"Name: {safe}",
             f"Policy: {spec.threshold} of {len(spec.keys)}", "Format: P2WSH"]
    last = None
    for key in spec.keys:
        derivation = key.path_str.replace("h", "'")
        if derivation != last:
            lines += ["", f"Derivation: {derivation}", ""]
            last = derivation
        lines.append(f"{key.fingerprint.upper()}: {key.xpub}")
    return "\n".join(lines) + "\n"


def _import_coldcard(text: str, network: str) -> tuple[PolicySpec, str]:
    """Reads the file as Coldcard does (no Format line means P2SH; no Policy line means N of N), and
    refuses what the device would read differently from other tools."""
    name, policy, addr_format, derivation, comment, keys = None, None, None, None, None, []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if line.startswith("#"):
            m = re.fullmatch(r"#\s*derivation\s*:\s*(\S+)", line, re.I)   # Electrum / BlueWallet per-key form
            comment = m.group(1) if m else comment
            continue
        line = re.sub(r"#(?!\d).*$", "", line).strip()                   # trailing comment, as Coldcard cuts it
        if not line:
            continue
        label, sep, value = (part.strip() for part in line.partition(":"))
        if not sep:
            raise FormatError(f"coldcard line {number} is not 'Label: value'"
                              + (" (a key needs its fingerprint: 'XFP: xpub')" if "pub" in line else ""))
        lower = label.lower()
        if lower == "name":
            name = value
        elif lower == "policy":
            m = re.fullmatch(r"(\d+)\s*(?:of|/|,|\s)\s*(\d+)", value, re.I)   # Coldcard's spellings
            if not m:
                raise FormatError(f"coldcard policy {value!r} is not 'M of N'")
            policy = int(m.group(1)), int(m.group(2))
        elif lower == "derivation":
            derivation = value
        elif lower == "format":
            if value.lower() not in _COLDCARD_FORMATS:
                raise FormatError(f"coldcard format {value!r} is not one of P2SH, P2SH-P2WSH, P2WSH")
            addr_format = _COLDCARD_FORMATS[value.lower()]
        elif re.fullmatch(r"[0-9a-fA-F]{8}", label):
            path = comment or derivation
            if path is None:
                raise FormatError(f"coldcard key {label} has no derivation: add 'Derivation: m/...' before it")
            if comment and derivation and parse_path(comment) != parse_path(derivation):
                raise FormatError(f"coldcard key {label}: the comment '# derivation: {comment}' contradicts "
                                  f"'Derivation: {derivation}', which Coldcard would use")
            keys.append(parse_key(value, network=network, fingerprint=label, path=path))
            comment = None
        else:
            raise FormatError(f"coldcard file has an unknown line {label!r} (line {number})")
    if addr_format is None:
        raise FormatError("the coldcard file has no 'Format:' line, so Coldcard reads it as P2SH; "
                          "only P2WSH (native segwit) wallets can be imported")
    if addr_format != "P2WSH":
        raise FormatError(f"coldcard format {addr_format} is not supported: custody policies are P2WSH (native segwit)")
    if not keys:
        raise FormatError("the coldcard file lists no keys ('XFP: xpub' lines)")
    threshold, total = policy or (len(keys), len(keys))
    if total != len(keys):
        raise FormatError(f"the coldcard file says {total} keys but lists {len(keys)}")
    if total > COLDCARD_MAX_SIGNERS:
        raise FormatError(f"Coldcard takes at most {COLDCARD_MAX_SIGNERS} co-signers, not {total}")
    return build_policy("wsh-sortedmulti", threshold, keys, network=network), name or f"{threshold}-of-{total}"


# -- Sparrow -----------------------------------------------------------------------------------
def _export_sparrow(spec: PolicySpec, name: str) -> str:
    """Sparrow's own layout. Sparrow reads every multisig descriptor as sortedmulti and refuses taproot
    script paths, so anything else would give it other addresses (or none)."""
    _only_sortedmulti(spec, "Sparrow", "Sparrow reads any multisig descriptor as sortedmulti of all its keys "
                      "and refuses taproot script paths")
    return (f"# Receive and change descriptor (BIP389):\n{spec.descriptor()}\n\n\n"
            f"# Receive descriptor (Bitcoin Core):\n{spec.descriptor(0)}\n\n"
            f"# Change descriptor (Bitcoin Core):\n{spec.descriptor(1)}\n")


def _import_sparrow(text: str, network: str) -> tuple[PolicySpec, str]:
    """Paragraphs of descriptor text, comments skipped (a descriptor may wrap over lines), as Sparrow reads it."""
    paragraphs, current = [], ""
    for line in [*text.splitlines(), ""]:
        line = line.strip()
        if line.startswith("#"):
            continue
        if line:
            current += line
        elif current:
            paragraphs.append(current)
            current = ""
    specs = []
    for paragraph in paragraphs:
        body = paragraph.partition("#")[0]
        if "?" in body:                            # Sparrow annotations (?bh=…&gl=…) sit inside the checksum
            check_and_strip_checksum(paragraph)
            paragraph = body.split("?")[0]
        specs.append(_descriptor(paragraph, network)[0])
    return _same_policy(specs, "Sparrow export"), "sparrow"


# -- Specter -----------------------------------------------------------------------------------
def _export_specter(spec: PolicySpec, name: str) -> str:
    """Specter's account-map backup. Its "descriptor" is the receive one: Specter refuses any key that
    does not derive /0/*, and (since v2.0.2) keeps the descriptor as given, miniscript and taproot too."""
    devices = [{"type": "other", "label": f"{'recovery' if i >= len(spec.keys) else 'signer'} {k.fingerprint}"}
               for i, k in enumerate(spec.all_keys)]
    return json.dumps({"label": name, "blockheight": 0, "descriptor": spec.descriptor(0), "devices": devices},
                      indent=2) + "\n"


def _import_specter(text: str, network: str) -> tuple[PolicySpec, str]:
    data = _json(text, "a Specter wallet backup")
    key = "descriptor" if isinstance(data, dict) and "descriptor" in data else "recv_descriptor"
    spec, branch = _descriptor(_get(data, key, str, "a Specter wallet backup"), network)
    if branch == "/1/*":
        raise FormatError(f"the Specter \"{key}\" must be the receive descriptor (/0/*), not change (/1/*)")
    if data.get("change_descriptor") is not None:
        change, change_branch = _descriptor(_get(data, "change_descriptor", str, "a Specter wallet backup"), network)
        if change != spec or change_branch != "/1/*":
            raise FormatError("the Specter backup's change_descriptor is not the change branch of the same policy")
    name = data.get("label") or data.get("name")
    return spec, name if isinstance(name, str) else "specter"


# -- Caravan -----------------------------------------------------------------------------------
def _export_caravan(spec: PolicySpec, name: str) -> str:
    """Caravan builds P2WSH multisig from BIP-67 sorted keys, so it carries wsh(sortedmulti) only."""
    _only_sortedmulti(spec, "Caravan", "Caravan always sorts the keys (BIP-67)")
    return json.dumps({
        "name": name, "addressType": "P2WSH", "network": _CARAVAN_NETWORK[_network_of(spec)],
        "client": {"type": "public"},
        "quorum": {"requiredSigners": spec.threshold, "totalSigners": len(spec.keys)},
        "extendedPublicKeys": [{"name": f"signer {i + 1} ({k.fingerprint})", "bip32Path": k.path_str.replace("h", "'"),
                                "xpub": k.xpub, "xfp": k.fingerprint, "method": "text"}
                               for i, k in enumerate(spec.keys)],
        "startingAddressIndex": 0}, indent=2) + "\n"


def _import_caravan(text: str, network: str) -> tuple[PolicySpec, str]:
    data = _json(text, "a Caravan wallet configuration")
    if not isinstance(data, dict):
        raise FormatError("a Caravan wallet configuration is a JSON object")
    address_type = data.get("addressType")
    if address_type != "P2WSH":
        raise FormatError(f"Caravan address type {address_type!r} is not supported: custody policies are P2WSH")
    if data.get("network") != _CARAVAN_NETWORK[network]:
        raise FormatError(f"the Caravan wallet is for {data.get('network')}, not {_CARAVAN_NETWORK[network]}")
    quorum = _get(data, "quorum", dict, "a Caravan configuration")
    required = _get(quorum, "requiredSigners", int, "the Caravan quorum")
    total = _get(quorum, "totalSigners", int, "the Caravan quorum")
    keys = []
    for i, entry in enumerate(_get(data, "extendedPublicKeys", list, "a Caravan configuration"), 1):
        where = f"Caravan key {i}"
        xfp, path = _get(entry, "xfp", str, where), _get(entry, "bip32Path", str, where)
        if not re.fullmatch(r"[0-9a-fA-F]{8}", xfp) or not path.startswith("m"):
            raise FormatError(f"{where} has no known root fingerprint and path (xfp {xfp!r}, bip32Path {path!r}); "
                              "re-add it from its device")
        keys.append(parse_key(_get(entry, "xpub", str, where), network=network, fingerprint=xfp, path=path))
    if total != len(keys):
        raise FormatError(f"the Caravan quorum says {total} signers but lists {len(keys)} keys")
    name = data.get("name")
    return build_policy("wsh-sortedmulti", required, keys, network=network), name if isinstance(name, str) else "caravan"


_EXPORTERS = {"core": _export_core, "bsms": _export_bsms, "coldcard": _export_coldcard, "sparrow": _export_sparrow,
              "specter": _export_specter, "caravan": _export_caravan}
_IMPORTERS = {"core": _import_core, "coldcard": _import_coldcard, "sparrow": _import_sparrow,
              "specter": _import_specter, "caravan": _import_caravan}
