"""custody.bitcoin.formats: every format round-trips the policies it can carry, refuses the ones it cannot,
and refuses a bad file with one line a treasury officer can act on. BIP-129's own vectors included."""
from __future__ import annotations

import json
import random
import re

import pytest
from embit import base58
from embit.bip32 import HDKey
from embit.networks import NETWORKS

from custody.bitcoin.formats import detect_format, export_policy, FormatError, FORMATS, import_policy
from custody.bitcoin.keys import KeyImportError, parse_key
from custody.bitcoin.policies import add_checksum, build_policy, PolicyError

# BIP-129 test vectors (bitcoin/bips, bip-0129.mediawiki), copied verbatim.

# Mode NO_ENCRYPTION, round 2: the coordinator's descriptor record of a 2-of-2.
BIP129_RECORD = """BSMS 1.0
wsh(sortedmulti(2,[1cf0bf7e/48'/0'/0'/2']xpub6FL8FhxNNUVnG64YurPd16AfGyvFLhh7S2uSsDqR3Qfcm6o9jtcMYwh6DvmcBF9qozxNQmTCVvWtxLpKTnhVLN3Pgnu2D3pAoXYFgVyd8Yz/**,[4fc1dd4a/48'/0'/0'/2']xpub6EebMbEps7ZcV3FYEnddRsvrFWDrt2tiPmCeM7pPXQEmphvq9ZfJ1LWFUDjf3vxCeBuPrfyGrMazWUsYsetrnHatQZVLJH7LsgCjtMqdzgj/**))
/0/*,/1/*
bc1qrgc6p3kylfztu06ysl752gwwuekhvtfh9vr7zg43jvu60mutamcsv948ej
"""
# Mode STANDARD, round 2: the plaintext record, its encrypted form (.dat) and the session TOKEN.
BIP129_STANDARD_RECORD = """BSMS 1.0
wsh(sortedmulti(2,[b7868815/48'/0'/0'/2']xpub6FA5rfxJc94K1kNtxRby1hoHwi7YDyTWwx1KUR3FwskaF6HzCbZMz3zQwGnCqdiFeMTPV3YneTGS2YQPiuNYsSvtggWWMQpEJD4jXU7ZzEh/**,[eedff89a/48'/0'/0'/2']xpub6EhJvMneoLWAf8cuyLBLQiKiwh89RAmqXEqYeFuaCEHdHwxSRfzLrUxKXEBap7nZSHAYP7Jfq6gZmucotNzpMQ9Sb1nTqerqW8hrtmx6Y6o/**))
/0/*,/1/*
bc1qhs4u273g4azq7kqqpe6vh5wfhasfmrq7nheyzsnq77humd7rwtkqagvakf
"""
BIP129_STANDARD_DAT = (
    "734ce791b466861945e1ef6f74c63faec590793de54831f0036b28d08714b71a273cad18a5e1eff37dba6d850749594c"
    "9a3fd32b2069e8c69983ea269c5044b6bcaea26d9dbc8ad5d28bb8abfa02e3bfc7632fcc5c2b76e9abb1982ff1129585"
    "8cfe44a8b97110ae970f58fff3fb6477f38ca9609eec78eedb1d640eaba489fd5e41e787b8d0bde48f1fa99cca641cab"
    "bee0f513fb1040cb73df10a57c9a34e4efcb069cd4c75467442c15d878ed9f40e3dffb98294931a6da4f444ae46f739b"
    "7fe002ce19fcfe71b05b9783d797ba45d568febbc8a2b0850da67f349d8567342352e1712c3d2a7ea1b2721df5efdb84"
    "4431f0e5dcfa4acacb194c20785c9bb6dde90d64352fc913e9073b3b416be713bcc7632c821bbfddafa6199d471c54fb"
    "899f347f5fc706787ccaa82332dc8b93aeb3de3497d8e5c75f0f5d718c74bc6f8194fe999948e517f1c98398d9cb907d"
    "200f1d045394704b074dfb10e587f54fd78e95ef4bcbe77bf1376b390c3f47c91c12b2ed14073ea56bceab41f924302e"
    "62183c456b06d96b3da30439cb4320c764a0d6d1b3dabc06fc")
BIP129_STANDARD_TOKEN, BIP129_STANDARD_TOKEN_DECIMAL = "a54044308ceac9b7", "11907592390080907703"
# Mode EXTENDED, round 2, as sent to signer 1 (128-bit token): a nested segwit sh(wsh(multi)) wallet.
BIP129_EXTENDED_DAT_SIGNER_1 = (
    "01bf557b6d44b3fbf07f8ec155cbdec42d85d856e174342563dd83b40ad7c025617ed25b4b8fd88b806cbebcc1731b07"
    "1465514a805f7ba2de60e291bc9493f31aa0f9b0665ba822cf9a2e21c02649b5c3f7dbad317ae898292cb6fe992520f6"
    "8c0ebe9d1434b348af10453f1be0a392a616d43ba21e5e7fa3c995dce54db947fe5dbad4a9a77f37b3aef58c54ee3e49"
    "6c8312d3033359aed0de8cf28b82035ee7a38c9b23c9d95682fb15936bf2247546d2ba9b3ada605f5c89f0a3bbaa86cb"
    "4b5dded9a65004912c0afbbfd01f0115447f5625e8523f9de16165d32c4b21103d8ac965e2f7e17641ee1a8c5902e8db"
    "b461c6c7d05141f7bba66b8b3608037fb251b55fa461c9441c6427921545a34a1798127d5bf9cc92423f7e62c769e232"
    "c65db8cc5124577012d49941143c3b4758212a8afa0475c9b3597da2e99d585039339b7d73611aa277878d2128750516"
    "83053db9c630391e0b32356523e9fa8a58a334e16fe6650472f336ddaa8c587992b6c0c0e480b680261579a11cf9d036"
    "614abc113dde53653273f5ce82ea0bc10e38ca52ac66838aa49ff46c3a7d5096db439c15d3c2e8de55e4ac7315a57eb9"
    "997f219c378af86c858867ce583ed84e4d9c68aecfbca9ebff16b0ac91531125e273b215db688ffe52c8033eb78914b8"
    "7c0fa2001c52e90c92765712e50384ddcf4d0953ac3cc8137abcb2a85d603a6cc207472677")
BIP129_EXTENDED_TOKEN_SIGNER_1 = "108a2360adb302774eb521daebbeda5e"
# Mode NO_ENCRYPTION with public keys, round 2: plain keys, no path restrictions.
BIP129_PUBKEY_RECORD = """BSMS 1.0
wsh(sortedmulti(1,[59865f44/48'/0'/0'/2']026d15412460ba0d881c21837bb999233896085a9ed4e5445bd637c10e579768ba,[b7044ca6/48'/0'/0'/2']030baf0497ab406ff50cb48b4013abac8a0338758d2fd54cd934927afa57cc2062))#rzx9dffd
No path restrictions
bc1quqy523xu3l8che3s8vja8n33qtg0uyugr9l5z092s3wa50p8t7rqy6zumf
"""
# Mode NO_ENCRYPTION, round 1: signer 1's key record.
BIP129_KEY_RECORD = """BSMS 1.0
00
[1cf0bf7e/48'/0'/0'/2']xpub6FL8FhxNNUVnG64YurPd16AfGyvFLhh7S2uSsDqR3Qfcm6o9jtcMYwh6DvmcBF9qozxNQmTCVvWtxLpKTnhVLN3Pgnu2D3pAoXYFgVyd8Yz
Signer 1 key
IB7v+qi1b+Xrwm/3bF+Rjl8QbIJ/FMQ40kUsOOQo1SqUWn5QlFWbBD8BKPRetfo1L1N7DmYjVscZNsmMrqRJGWw=
"""


def key(i: int) -> str:
    """An account key "[fp/48h/1h/0h/2h]tpub…" of the device whose seed is bytes([i]) * 32."""
    root = HDKey.from_seed(bytes([i]) * 32, version=NETWORKS["regtest"]["xprv"])
    return f"[{root.my_fingerprint.hex()}/48h/1h/0h/2h]{root.derive('m/48h/1h/0h/2h').to_public().to_base58()}"


KEYS = [key(i) for i in range(1, 5)]
MULTISIG = build_policy("wsh-sortedmulti", 2, KEYS[:3])
OTHER_SHAPES = {
    "wsh-multi": build_policy("wsh-multi", 2, KEYS[:3]),
    "tr-sortedmulti_a": build_policy("tr-sortedmulti_a", 2, KEYS[:3]),
    "wsh-recovery": build_policy("wsh-recovery", 2, KEYS[:3], recovery_keys=KEYS[3:], recovery_after=1_000),
}
NAMED = {"core", "coldcard", "specter", "caravan"}          # formats that carry the wallet's name
DESCRIPTOR_FORMATS = ("core", "bsms", "specter")            # formats that carry every policy shape


def rechecksum(text: str) -> str:
    """Give every descriptor in `text` its right checksum again (after a test edited it)."""
    return re.sub(r"((?:wsh|tr)\([^\s\"#]*\))#[0-9a-z]{8}", lambda m: add_checksum(m.group(1)), text)


def refused(text: str, fmt: str | None = None, **kw) -> str:
    with pytest.raises(FormatError) as e:
        import_policy(text, fmt, **kw)
    assert "\n" not in str(e.value)
    return str(e.value)


# -- round trips ---------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", FORMATS)
def test_round_trip_2_of_3_sortedmulti(fmt):
    text = export_policy(MULTISIG, fmt, name="treasury")
    assert detect_format(text) == fmt
    spec, name = import_policy(text)
    assert spec == MULTISIG and import_policy(text, fmt)[0] == MULTISIG
    if fmt in NAMED:
        assert name == "treasury"


@pytest.mark.parametrize("fmt", DESCRIPTOR_FORMATS)
@pytest.mark.parametrize("kind", OTHER_SHAPES)
def test_descriptor_formats_carry_every_shape(fmt, kind):
    text = export_policy(OTHER_SHAPES[kind], fmt)
    assert detect_format(text) == fmt
    assert import_policy(text)[0] == OTHER_SHAPES[kind]


@pytest.mark.parametrize("fmt", ["coldcard", "caravan", "sparrow"])
@pytest.mark.parametrize("kind", OTHER_SHAPES)
def test_sorted_multisig_formats_refuse_other_shapes(fmt, kind):
    """Coldcard and Caravan always sort keys; Sparrow reads any multisig descriptor as sortedmulti of all
    its keys (a recovery miniscript would become a plain 2-of-4) and refuses taproot script paths."""
    with pytest.raises(FormatError, match=r"wsh\(sortedmulti\) policies only.*core or bsms"):
        export_policy(OTHER_SHAPES[kind], fmt)


def test_sparrow_reads_any_descriptor_text_and_sparrow_s_layout():
    for spec in OTHER_SHAPES.values():        # reading a descriptor is safe whatever its shape
        assert import_policy(spec.descriptor(), "sparrow")[0] == spec
    text = export_policy(MULTISIG, "sparrow")
    assert text.startswith("# Receive and change descriptor (BIP389):\n" + MULTISIG.descriptor() + "\n\n\n")
    wrapped = MULTISIG.descriptor()[:90] + "\n" + MULTISIG.descriptor()[90:]       # a wrapped paragraph
    assert import_policy(f"# Output descriptor\n{wrapped}\n")[0] == MULTISIG
    annotated = add_checksum(MULTISIG.descriptor().split("#")[0] + "?bh=800000&gl=50")   # Sparrow annotations
    assert import_policy(annotated, "sparrow")[0] == MULTISIG


def test_unknown_format_and_network():
    with pytest.raises(FormatError, match="unknown format"):
        export_policy(MULTISIG, "electrum")
    assert "unknown format" in refused("x", "electrum")
    assert "unknown network" in refused(export_policy(MULTISIG, "core"), network="litecoin")


@pytest.mark.parametrize("text, message", [
    ("", "empty"), ("  \n", "empty"), ("hello treasury", "cannot tell"), ('{"foo": 1}', "unknown wallet format|no known"),
    ('{"descriptor": ', "not valid JSON"),
])
def test_detect_format_refusals(text, message):
    with pytest.raises(FormatError, match=message):
        detect_format(text)


# -- every format refuses the same faults --------------------------------------------------------
def _repeat_third_key(text: str) -> str:
    first, third = MULTISIG.keys[0], MULTISIG.keys[2]
    for a, b in ((third.xpub, first.xpub), (third.fingerprint, first.fingerprint),
                 (third.fingerprint.upper(), first.fingerprint.upper())):
        text = text.replace(a, b)
    return rechecksum(text)


def _threshold_4_of_3(text: str) -> str:
    for a, b in (("sortedmulti(2,", "sortedmulti(4,"), ("Policy: 2 of 3", "Policy: 4 of 3"),
                 ('"requiredSigners": 2', '"requiredSigners": 4')):
        text = text.replace(a, b)
    return rechecksum(text)


def _bad_checksum(text: str) -> str:
    """A descriptor checksum that does not match; where a format has none (Coldcard, Caravan), a key whose
    base58 checksum fails: the same typo caught the same way."""
    if "BSMS" in text:
        lines = text.splitlines()
        return "\n".join([lines[0], add_checksum(lines[1])[:-1] + "q", *lines[2:]])
    if "#" in re.sub(r"^#.*$", "", text, flags=re.M):
        return re.sub(r"#([0-9a-z]{7})([0-9a-z])", lambda m: "#" + m.group(1) + ("q" if m.group(2) != "q" else "p"), text)
    xpub = MULTISIG.keys[1].xpub
    return text.replace(xpub, xpub[:-1] + ("2" if xpub[-1] != "2" else "3"))


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("fault, mutate, message", [
    ("repeated key", _repeat_third_key, "repeats|same master"),
    ("M > N", _threshold_4_of_3, "threshold"),
    ("checksum", _bad_checksum, "checksum"),
])
def test_every_format_refuses(fmt, fault, mutate, message):
    text = export_policy(MULTISIG, fmt)
    bad = mutate(text)
    assert bad != text
    assert re.search(message, refused(bad, fmt))


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_refuses_the_wrong_network(fmt):
    assert re.search("mainnet|testnet|network", refused(export_policy(MULTISIG, fmt), fmt, network="main"))


@pytest.mark.parametrize("fmt", ["bsms", "caravan"])
def test_formats_that_name_the_test_network_tell_regtest_from_testnet(fmt):
    """tpub keys are the same on testnet, signet and regtest: only a first address or a network field tells."""
    assert re.search("another network|is for regtest", refused(export_policy(MULTISIG, fmt), fmt, network="test"))


@pytest.mark.parametrize("fmt", FORMATS)
def test_malformed_files_are_refused_never_misread(fmt):
    """Every truncation of a file is refused with a FormatError, or still reads as exactly the same policy."""
    text = export_policy(MULTISIG, fmt)
    for cut in range(0, len(text), 5):
        try:
            spec, _ = import_policy(text[:cut], fmt)
        except FormatError as e:
            assert "\n" not in str(e)
        else:
            assert spec == MULTISIG
    for garbage in ("not a wallet", "[1, 2]", "{}", "BSMS 1.0", "Policy: 2 of 3", "wsh(", '"x"', "null"):
        refused(garbage, fmt)


def test_key_and_policy_errors_surface_with_their_own_message():
    first = MULTISIG.keys[0]
    private = HDKey.from_seed(bytes([1]) * 32, version=NETWORKS["regtest"]["xprv"]).derive("m/48h/1h/0h/2h").to_base58()
    with pytest.raises(KeyImportError) as expected:
        parse_key(private, fingerprint=first.fingerprint, path="m/48h/1h/0h/2h")
    coldcard = export_policy(MULTISIG, "coldcard").replace(first.xpub, private)
    assert refused(coldcard, "coldcard") == str(expected.value)
    with pytest.raises(PolicyError) as expected:
        build_policy("wsh-sortedmulti", 4, KEYS[:3])
    assert refused(_threshold_4_of_3(export_policy(MULTISIG, "caravan")), "caravan") == str(expected.value)
    assert issubclass(FormatError, ValueError)


# -- Bitcoin Core ------------------------------------------------------------------------------
def test_core_export_is_what_importdescriptors_takes():
    requests = json.loads(export_policy(MULTISIG, "core", name="treasury"))
    assert [(r["desc"], r["internal"]) for r in requests] == [(MULTISIG.descriptor(0), False), (MULTISIG.descriptor(1), True)]
    assert all(r["active"] is True and r["range"] == [0, 999] and r["timestamp"] == "now" for r in requests)
    assert requests[0]["label"] == "treasury" and "label" not in requests[1]    # Core refuses labels on change


def test_core_import_takes_one_request_a_multipath_descriptor_or_listdescriptors():
    requests = json.loads(export_policy(MULTISIG, "core", name="treasury"))
    assert import_policy(json.dumps(requests[0])) == (MULTISIG, "treasury")
    assert import_policy(json.dumps({"desc": MULTISIG.descriptor(), "active": True}))[0] == MULTISIG
    assert import_policy(MULTISIG.descriptor(), "core")[0] == MULTISIG
    listed = {"wallet_name": "vault", "descriptors": [
        {"desc": MULTISIG.descriptor(b), "timestamp": 1_700_000_000, "active": True, "internal": bool(b),
         "range": [0, 999], "next": 0, "next_index": 0} for b in (0, 1)]}
    assert detect_format(json.dumps(listed)) == "core"
    assert import_policy(json.dumps(listed)) == (MULTISIG, "vault")


@pytest.mark.parametrize("requests, message", [
    ([{"desc": MULTISIG.descriptor(1), "internal": True, "label": "x"}], "label on an internal"),
    ([{"desc": MULTISIG.descriptor(), "internal": False}], "multipath"),
    ([{"desc": MULTISIG.descriptor(1), "internal": False}], "must derive /0/"),
    ([{"desc": MULTISIG.descriptor(0), "internal": True}], "must derive /1/"),
    ([{"desc": MULTISIG.descriptor(0)}, {"desc": OTHER_SHAPES["wsh-multi"].descriptor(1), "internal": True}],
     "different policies"),
    ([{"desc": add_checksum(MULTISIG.descriptor(0).split("#")[0].replace("/0/*", "/1/*", 1))}], "different branches"),
    ([{"desc": add_checksum(MULTISIG.descriptor(0).split("#")[0].replace("/0/*", "/0h/*"))}], "custody policies derive"),
    ([], "no descriptor"),
    ([{"descriptor": "x"}], "needs \"desc\""),
])
def test_core_refusals(requests, message):
    assert message in refused(json.dumps(requests), "core")


# -- BIP-129 BSMS ------------------------------------------------------------------------------
@pytest.mark.parametrize("record", [BIP129_RECORD, BIP129_STANDARD_RECORD])
def test_bip129_vectors_import_and_export_byte_for_byte(record):
    spec, _ = import_policy(record, network="main")
    assert (spec.kind, spec.threshold, len(spec.keys)) == ("wsh-sortedmulti", 2, 2)
    assert export_policy(spec, "bsms") == record


@pytest.mark.parametrize("token", [BIP129_STANDARD_TOKEN, BIP129_STANDARD_TOKEN_DECIMAL])
def test_bip129_encrypted_record_reads_with_the_session_token(token):
    assert detect_format(BIP129_STANDARD_DAT) == "bsms"
    assert import_policy(BIP129_STANDARD_DAT, network="main", token=token) == \
        import_policy(BIP129_STANDARD_RECORD, network="main")
    assert "session token" in refused(BIP129_STANDARD_DAT, network="main")
    assert "does not authenticate" in refused(BIP129_STANDARD_DAT, network="main", token="00" * 8)


def test_bip129_vectors_this_toolkit_cannot_hold_are_refused_by_name():
    assert "nested segwit" in refused(BIP129_EXTENDED_DAT_SIGNER_1, network="main", token=BIP129_EXTENDED_TOKEN_SIGNER_1)
    assert "extended public keys" in refused(BIP129_PUBKEY_RECORD, network="main")        # its checksum is right
    assert "checksum" in refused(BIP129_PUBKEY_RECORD.replace("#rzx9dffd", "#rzx9dffe"), network="main")
    assert "key record" in refused(BIP129_KEY_RECORD, network="main")


def test_bsms_first_address_must_match():
    other = _first_address_of(OTHER_SHAPES["wsh-multi"])
    text = export_policy(MULTISIG, "bsms")
    assert "does not match" in refused(text.replace(_first_address_of(MULTISIG), other))
    tampered = BIP129_RECORD.replace("bc1qrgc6p3kylfztu06ysl752gwwuekhvtfh9vr7zg43jvu60mutamcsv948ej",
                                     "bc1qhs4u273g4azq7kqqpe6vh5wfhasfmrq7nheyzsnq77humd7rwtkqagvakf")
    assert "first address" in refused(tampered, network="main")


def _first_address_of(spec) -> str:
    return export_policy(spec, "bsms").splitlines()[3]


def test_bsms_records_as_other_coordinators_write_them():
    first = _first_address_of(MULTISIG)
    sparrow = f"BSMS 1.0\n{MULTISIG.descriptor()}\n/0/*,/1/*\n{first}"             # <0;1>/*, checksum, no newline
    assert import_policy(sparrow)[0] == MULTISIG
    assert import_policy(f"BSMS 1.0\r\n{MULTISIG.descriptor()}\r\nNo path restrictions\r\n{first}\r\n")[0] == MULTISIG
    template = export_policy(MULTISIG, "bsms").splitlines()[1]
    with_checksum = f"BSMS 1.0\n{add_checksum(template)}\n/0/*,/1/*\n{first}\n"     # checksum over the /** line
    assert import_policy(with_checksum)[0] == MULTISIG


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.replace("/0/*,/1/*", "No path restrictions"), "needs the path restrictions"),
    (lambda t: t.replace("/0/*,/1/*", "/0/*"), "unsupported BSMS path restrictions"),
    (lambda t: t.replace("BSMS 1.0", "BSMS 2.0"), "unsupported BSMS version"),
    (lambda t: t.replace("/**", "/0/*"), "one branch"),
    (lambda t: "\n".join(t.splitlines()[:3]), "4 lines"),
])
def test_bsms_refusals(edit, message):
    assert message in refused(edit(export_policy(MULTISIG, "bsms")), "bsms")


def test_bsms_export_keeps_every_key_intact():
    """`'` for hardened steps only inside key origins: an `h` after a digit inside a base58 key stays."""
    spec = build_policy("wsh-sortedmulti", 2, [key(i) for i in range(1, 21)])
    text = export_policy(spec, "bsms")
    assert all(k.xpub in text for k in spec.keys)
    assert "'" not in re.sub(r"\[[^\]]*\]", "", text)


# -- Coldcard ----------------------------------------------------------------------------------
def _coldcard_lines(keys, *, comment=False):
    lines = []
    for k in keys:
        if comment:
            lines.append(f"# derivation: {k.path_str.replace('h', chr(39))}")
        lines.append(f"{k.fingerprint.upper()}: {k.xpub}")
    return lines


def _slip132(xpub: str, version: str = "Zpub") -> str:
    return base58.encode_check(NETWORKS["test"][version] + base58.decode_check(xpub)[4:])


def test_coldcard_export_is_laid_out_as_the_device_writes_it():
    text = export_policy(MULTISIG, "coldcard", name="Trésorerie centrale 2026")
    assert "Name: Tr_sorerie centrale\nPolicy: 2 of 3\nFormat: P2WSH\n\nDerivation: m/48'/1'/0'/2'\n\n" in text
    assert text.endswith("\n".join(_coldcard_lines(MULTISIG.keys)) + "\n")


def test_coldcard_files_from_other_tools():
    electrum = ["# Exported from Electrum", "Name: ops", "Policy: 2 of 3", "Format: P2WSH", ""]
    electrum += [f"# derivation: {k.path_str.replace('h', chr(39))}\n{k.fingerprint.upper()}: {_slip132(k.xpub)}"
                 for k in MULTISIG.keys]                                       # SLIP-132 Vpub keys
    assert import_policy("\n".join(electrum)) == (MULTISIG, "ops")
    specter = ["Name: ops # our vault", "Policy: 2/3", "Derivation: m/48h/1h/0h/2h", "Format: p2wsh",
               *_coldcard_lines(MULTISIG.keys)]
    assert import_policy("\n".join(specter)) == (MULTISIG, "ops")
    no_policy = ["Format: P2WSH", "Derivation: m/48'/1'/0'/2'", *_coldcard_lines(MULTISIG.keys)]
    spec, name = import_policy("\n".join(no_policy))                  # Coldcard reads a missing Policy as N of N
    assert (spec.threshold, len(spec.keys), name) == (3, 3, "3-of-3")


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.replace("Format: P2WSH\n", ""), "reads it as P2SH"),
    (lambda t: t.replace("Format: P2WSH", "Format: P2SH-P2WSH"), "P2SH-P2WSH is not supported"),
    (lambda t: t.replace("Format: P2WSH", "Format: P2TR"), "not one of"),
    (lambda t: t.replace("Policy: 2 of 3", "Policy: two of three"), "M of N"),
    (lambda t: t.replace("Policy: 2 of 3", "Policy: 2 of 4"), "says 4 keys but lists 3"),
    (lambda t: t.replace("Derivation: m/48'/1'/0'/2'", ""), "no derivation"),
    (lambda t: t.replace("Derivation: m/48'/1'/0'/2'", "Derivation: m/48'/1'/0'/2'\n# derivation: m/48'/1'/1'/2'"),
     "contradicts"),
    (lambda t: t.replace("Name:", "Nmae:"), "unknown line"),
    (lambda t: t.replace(f"{MULTISIG.keys[0].fingerprint.upper()}: ", ""), "needs its fingerprint"),
    (lambda t: re.sub(r"^\w{8}: .*$", "", t, flags=re.M), "lists no keys"),
])
def test_coldcard_refusals(edit, message):
    text = export_policy(MULTISIG, "coldcard")
    assert message in refused(edit(text), "coldcard")


def test_coldcard_takes_at_most_15_signers():
    spec = build_policy("wsh-sortedmulti", 2, [key(i) for i in range(1, 17)])
    with pytest.raises(FormatError, match="at most 15"):
        export_policy(spec, "coldcard")
    text = "\n".join(["Policy: 2 of 16", "Format: P2WSH", "Derivation: m/48'/1'/0'/2'", *_coldcard_lines(spec.keys)])
    assert "at most 15" in refused(text, "coldcard")


# -- Specter -----------------------------------------------------------------------------------
def test_specter_backup_carries_the_receive_descriptor_and_one_device_per_key():
    backup = json.loads(export_policy(OTHER_SHAPES["wsh-recovery"], "specter", name="vault"))
    assert backup["descriptor"] == OTHER_SHAPES["wsh-recovery"].descriptor(0)    # Specter takes /0/* only
    assert backup["label"] == "vault" and len(backup["devices"]) == 4
    assert all(d["type"] == "other" for d in backup["devices"])


def test_specter_wallet_file_with_receive_and_change_descriptors():
    wallet = {"name": "vault", "recv_descriptor": MULTISIG.descriptor(0), "change_descriptor": MULTISIG.descriptor(1),
              "keys": [], "devices": ["a", "b", "c"], "sigs_required": 2}
    assert import_policy(json.dumps(wallet)) == (MULTISIG, "vault")
    wallet["change_descriptor"] = OTHER_SHAPES["wsh-multi"].descriptor(1)
    assert "change_descriptor" in refused(json.dumps(wallet))
    assert "receive descriptor" in refused(json.dumps({"label": "x", "descriptor": MULTISIG.descriptor(1)}))
    assert "needs \"descriptor\"" in refused(json.dumps({"label": "x", "descriptor": 7}), "specter")


# -- Caravan -----------------------------------------------------------------------------------
def _caravan() -> dict:
    return json.loads(export_policy(MULTISIG, "caravan", name="vault"))


def test_caravan_configuration_as_caravan_writes_it():
    config = _caravan()
    assert config["quorum"] == {"requiredSigners": 2, "totalSigners": 3} and config["addressType"] == "P2WSH"
    assert [(k["xfp"], k["bip32Path"], k["xpub"]) for k in config["extendedPublicKeys"]] == \
        [(k.fingerprint, "m/48'/1'/0'/2'", k.xpub) for k in MULTISIG.keys]
    config.update(uuid="abc", startingAddressIndex=5, ledgerPolicyHmacs=[], client={"type": "private", "url": "x"})
    assert import_policy(json.dumps(config)) == (MULTISIG, "vault")
    testnet4 = build_policy("wsh-sortedmulti", 2, KEYS[:3], network="testnet4")
    assert json.loads(export_policy(testnet4, "caravan"))["network"] == "testnet"
    assert import_policy(export_policy(testnet4, "caravan"), network="testnet4")[0] == testnet4


@pytest.mark.parametrize("edit, message", [
    (lambda c: c.update(addressType="P2SH"), "P2SH' is not supported"),
    (lambda c: c["extendedPublicKeys"][0].update(bip32Path="Unknown"), "no known root fingerprint"),
    (lambda c: c["extendedPublicKeys"][1].pop("xfp"), "needs \"xfp\""),
    (lambda c: c["quorum"].update(totalSigners=4), "says 4 signers"),
    (lambda c: c["quorum"].update(requiredSigners="2"), "needs \"requiredSigners\" (a number)"),
    (lambda c: c.pop("extendedPublicKeys"), "needs \"extendedPublicKeys\""),
])
def test_caravan_refusals(edit, message):
    config = _caravan()
    edit(config)
    assert message in refused(json.dumps(config), "caravan")


def test_mutated_files_never_crash_and_never_change_the_keys():
    """Random one-to-three character edits: a FormatError, or the same quorum of the same keys (key-origin
    text past the last step is unverifiable without the devices, in every tool)."""
    rng = random.Random(129)
    specs = [MULTISIG, *OTHER_SHAPES.values()]
    for _ in range(600):
        spec, fmt = rng.choice(specs), rng.choice(FORMATS)
        try:
            chars = list(export_policy(spec, fmt))
        except FormatError:
            continue
        for _ in range(rng.randint(1, 3)):
            i = rng.randrange(len(chars))
            chars[i:i + rng.randint(0, 1)] = rng.choice(["", rng.choice("0123456789abcdefh[](),;:/*#'\"\n ")])
        try:
            got, _ = import_policy("".join(chars), fmt)
        except FormatError as e:
            assert "\n" not in str(e)
        else:
            assert (got.kind, got.threshold, [k.xpub for k in got.all_keys]) == \
                (spec.kind, spec.threshold, [k.xpub for k in spec.all_keys])
