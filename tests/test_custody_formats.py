"""Wallet files: round trips for every format, the BIP-129 test vector, and every refusal."""
from __future__ import annotations

import json

import pytest

from custody.bitcoin.formats import detect_format, export_policy, FormatError, FORMATS, import_policy
from custody.bitcoin.policies import build_policy

from .conftest import hd_keys

# BIP-129, "Mode: NO_ENCRYPTION", round 2: the coordinator's descriptor record for a 2-of-2.
BIP129_RECORD = """BSMS 1.0
wsh(sortedmulti(2,[1cf0bf7e/48'/0'/0'/2']xpub6FL8FhxNNUVnG64YurPd16AfGyvFLhh7S2uSsDqR3Qfcm6o9jtcMYwh6DvmcBF9qozxNQmTCVvWtxLpKTnhVLN3Pgnu2D3pAoXYFgVyd8Yz/**,[4fc1dd4a/48'/0'/0'/2']xpub6EebMbEps7ZcV3FYEnddRsvrFWDrt2tiPmCeM7pPXQEmphvq9ZfJ1LWFUDjf3vxCeBuPrfyGrMazWUsYsetrnHatQZVLJH7LsgCjtMqdzgj/**))
/0/*,/1/*
bc1qrgc6p3kylfztu06ysl752gwwuekhvtfh9vr7zg43jvu60mutamcsv948ej
"""


@pytest.fixture
def spec():
    return build_policy("wsh-sortedmulti", 2, hd_keys(3, seed_base=700))


def test_bip129_vector_imports_and_exports_byte_for_byte():
    spec, _ = import_policy(BIP129_RECORD, network="main")
    assert spec.threshold == 2 and len(spec.keys) == 2 and spec.keys[0].fingerprint == "1cf0bf7e"
    assert export_policy(spec, "bsms") == BIP129_RECORD


def test_bip129_record_with_a_wrong_first_address_is_refused():
    tampered = BIP129_RECORD.replace("bc1qrgc6p3kylfztu06ysl752gwwuekhvtfh9vr7zg43jvu60mutamcsv948ej",
                                     "bc1qhs4u273g4azq7kqqpe6vh5wfhasfmrq7nheyzsnq77humd7rwtkqagvakf")
    with pytest.raises(FormatError, match="first address"):
        import_policy(tampered, network="main")


@pytest.mark.parametrize("fmt", FORMATS)
def test_round_trip_and_detection(spec, fmt):
    text = export_policy(spec, fmt, name="vault")
    assert detect_format(text) == fmt
    back, name = import_policy(text)
    assert back == spec
    if fmt not in ("bsms", "sparrow"):   # those formats carry no wallet name
        assert name == "vault"


@pytest.mark.parametrize("fmt", ["core", "bsms", "specter"])
@pytest.mark.parametrize("kind", ["tr-sortedmulti_a", "wsh-recovery"])
def test_descriptor_formats_carry_taproot_and_recovery(fmt, kind):
    keys = hd_keys(4, seed_base=710)
    spec = build_policy(kind, 2, keys[:3], recovery_keys=keys[3:] if kind == "wsh-recovery" else [],
                        recovery_after=1_000)
    assert import_policy(export_policy(spec, fmt), fmt)[0] == spec


@pytest.mark.parametrize("fmt", ["coldcard", "caravan", "sparrow"])   # Sparrow would read it as sortedmulti
def test_formats_that_cannot_express_a_policy_say_so(fmt):
    spec = build_policy("tr-sortedmulti_a", 2, hd_keys(3, seed_base=720))
    with pytest.raises(FormatError, match="sortedmulti"):
        export_policy(spec, fmt)


def test_core_export_is_what_importdescriptors_takes(spec):
    requests = json.loads(export_policy(spec, "core"))
    assert [r["internal"] for r in requests] == [False, True]
    assert all(r["active"] and r["range"] == [0, 999] and "#" in r["desc"] for r in requests)
    assert "label" not in requests[1]             # Core refuses labels on internal descriptors


def test_coldcard_with_per_key_derivation_comments_and_slip132_keys(spec):
    from embit import base58
    from embit.networks import NETWORKS
    lines = ["Name: ops", "Policy: 2 of 3", "Format: P2WSH", ""]
    for key in spec.keys:
        raw = base58.decode_check(key.xpub)
        vpub = base58.encode_check(NETWORKS["test"]["Zpub"] + raw[4:])      # SLIP-132 Vpub
        lines += [f"# derivation: {key.path_str.replace('h', chr(39))}", f"{key.fingerprint.upper()}: {vpub}"]
    assert import_policy("\n".join(lines), "coldcard") == (spec, "ops")


@pytest.mark.parametrize("mutate, message", [
    (lambda t: t.replace("Policy: 2 of 3", "Policy: 4 of 3"), "says 3 keys|threshold"),
    (lambda t: t.replace("Format: P2WSH", "Format: P2SH"), "not supported"),
    (lambda t: t.replace("Policy: 2 of 3", "Policy: two of three"), "M of N"),
])
def test_coldcard_refusals(spec, mutate, message):
    with pytest.raises(FormatError, match=message):
        import_policy(mutate(export_policy(spec, "coldcard")), "coldcard")


def test_repeated_key_refused_in_every_format():
    keys = hd_keys(2, seed_base=730)
    good = build_policy("wsh-sortedmulti", 2, keys + hd_keys(1, seed_base=740))
    for fmt in FORMATS:
        text = export_policy(good, fmt)
        third = str(good.keys[2])
        bad = text.replace(good.keys[2].xpub, good.keys[0].xpub).replace(good.keys[2].fingerprint, good.keys[0].fingerprint)
        bad = bad.replace(good.keys[2].fingerprint.upper(), good.keys[0].fingerprint.upper())
        if fmt in ("core", "specter", "sparrow"):
            bad = _strip_checksums(bad)
        if fmt == "bsms":
            continue   # the first address check refuses it first; covered above
        with pytest.raises(FormatError, match="repeats|same master"):
            import_policy(bad, fmt)
        assert third   # the substitution touched the third key


def _strip_checksums(text: str) -> str:
    import re
    return re.sub(r"#[0-9a-z]{8}", "", text)


def test_wrong_network_and_bad_checksum(spec):
    with pytest.raises(FormatError, match="mainnet|testnet|network"):
        import_policy(export_policy(spec, "core"), network="main")
    with pytest.raises(FormatError, match="Caravan wallet is for regtest"):
        import_policy(export_policy(spec, "caravan"), network="signet")
    text = export_policy(spec, "core")
    checksum = json.loads(text)[0]["desc"].split("#")[1]
    with pytest.raises(FormatError, match="checksum"):
        import_policy(text.replace(checksum, "qqqqqqqq" if checksum != "qqqqqqqq" else "pppppppp"), "core")


@pytest.mark.parametrize("text", ["", "not a wallet", "{\"foo\": 1}", "BSMS 1.0\nonly two lines", "[{\"nodesc\": 1}]"])
def test_garbage_is_refused(text):
    with pytest.raises(FormatError):
        import_policy(text)
