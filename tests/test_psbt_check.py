"""`custody psbt check` against every BIP-174 and BIP-370 parser test vector, in every encoding, and
against hand-made damage: each refusal is one line naming its own defect."""
from __future__ import annotations

import base64
import hashlib
import json
import random
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from embit.hashes import hash160, ripemd160
from embit.psbt import PSBT
from embit.script import Script
from embit.transaction import Transaction, TransactionInput, TransactionOutput

from custody.bitcoin.psbt_check import check_psbt, decode, PSBTError

VECTORS = Path(__file__).with_name("vectors")
BIP174 = json.loads((VECTORS / "bip174.json").read_text())
BIP370 = json.loads((VECTORS / "bip370.json").read_text())
LOCKTIME = [(int(k), c) for k, cases in BIP370["locktime"].items() if k != "none" for c in cases]
INVALID = BIP174["invalid"] + BIP370["invalid"]
# The signer-check vectors are well-formed PSBTs a signer must refuse: the parser accepts them.
VALID = BIP174["valid"] + BIP174["fails_signer_checks"] + BIP370["valid"] + [c for _, c in LOCKTIME]

# What each invalid vector's one-line refusal must name (its own defect, not an accident of parsing).
EXPECTED = {
    "Network transaction, not PSBT format": "magic",
    "PSBT missing outputs": r"1 inputs and 2 outputs, but the PSBT ends after 0 output maps",
    "PSBT where one input has a filled scriptSig in the unsigned tx": "input 0 has a scriptSig",
    "PSBT where inputs and outputs are provided but without an unsigned tx": "requires PSBT_GLOBAL_UNSIGNED_TX",
    "PSBT with duplicate keys in an input": "input 0: duplicate key",
    "PSBT with invalid global transaction typed key": "PSBT_GLOBAL_UNSIGNED_TX key: .*key data",
    "PSBT with invalid input witness utxo typed key": "PSBT_IN_WITNESS_UTXO key: .*key data",
    "PSBT with invalid pubkey length for input partial signature typed key": "PSBT_IN_PARTIAL_SIG key: public key of 32",
    "PSBT with invalid redeemscript typed key": "PSBT_IN_REDEEM_SCRIPT key: .*key data",
    "PSBT with invalid witnessscript typed key": "PSBT_IN_WITNESS_SCRIPT key: .*key data",
    "PSBT with invalid pubkey in input BIP 32 derivation paths typed key": "PSBT_IN_BIP32_DERIVATION key: public key",
    "PSBT with invalid non-witness utxo typed key": "PSBT_IN_NON_WITNESS_UTXO key: .*key data",
    "PSBT with invalid final scriptsig typed key": "PSBT_IN_FINAL_SCRIPTSIG key: .*key data",
    "PSBT with invalid final script witness typed key": "PSBT_IN_FINAL_SCRIPTWITNESS key: .*key data",
    "PSBT with invalid pubkey in output BIP 32 derivation paths typed key": "PSBT_OUT_BIP32_DERIVATION key: public key",
    "PSBT with invalid input sighash type typed key": "PSBT_IN_SIGHASH_TYPE key: .*key data",
    "PSBT with invalid output redeemScript typed key": "PSBT_OUT_REDEEM_SCRIPT key: .*key data",
    "PSBT with invalid output witnessScript typed key": "PSBT_OUT_WITNESS_SCRIPT key: .*key data",
    "PSBT with unsigned tx serialized with witness serialization format": "PSBT_GLOBAL_UNSIGNED_TX is in the witness serialization",
    "PSBT with an invalid value data due to its size being not the stated size": "PSBT_GLOBAL_UNSIGNED_TX has 22 bytes more",
    "PSBTv0 but with PSBT_GLOBAL_VERSION set to 2.": "PSBT_GLOBAL_UNSIGNED_TX is not allowed in PSBT version 2",
    "PSBTv2 but with PSBT_GLOBAL_UNSIGNED_TX.": "PSBT_GLOBAL_UNSIGNED_TX is not allowed in PSBT version 2",
    "PSBTv2 with PSBT_IN_REQUIRED_TIME_LOCKTIME less than 500000000.": "499999999 is not a time",
    "PSBTv2 with PSBT_IN_REQUIRED_HEIGHT_LOCKTIME greater than or equal to 500000000.": "500000000 is not a block height",
    "PSBTv2 with PSBT_IN_REQUIRED_HEIGHT_LOCKTIME of 0.": "0 is not a block height",
}
for _case in BIP370["invalid"]:
    _field = _case["description"].split()[-1].rstrip(".")
    if _case["description"].startswith("PSBTv0 but with PSBT_") and "VERSION set" not in _case["description"]:
        EXPECTED[_case["description"]] = f"{_field} is not allowed in PSBT version 0"
    elif _case["description"].startswith("PSBTv2 missing"):
        EXPECTED[_case["description"]] = f"PSBT version 2 requires {_field}"


def ids(cases):
    return [c["description"][:70] for c in cases]


def one_line_refusal(data, match: str) -> str:
    with pytest.raises(PSBTError, match=match) as e:
        check_psbt(data)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_vector_files_hold_every_parser_vector():
    assert (len(BIP174["invalid"]), len(BIP174["valid"]), len(BIP174["fails_signer_checks"])) == (20, 10, 4)
    assert (len(BIP370["invalid"]), len(BIP370["valid"]), len(LOCKTIME), len(BIP370["locktime"]["none"])) == (24, 14, 9, 1)
    assert set(EXPECTED) == {c["description"] for c in INVALID}


# -- the BIPs' vectors ------------------------------------------------------------------------
@pytest.mark.parametrize("case", INVALID, ids=ids(INVALID))
def test_every_invalid_vector_is_refused_for_its_own_defect(case):
    raw = base64.b64decode(case["psbt"])
    for encoding in (case["psbt"], raw.hex(), raw):
        one_line_refusal(encoding, EXPECTED[case["description"]])


@pytest.mark.parametrize("case", VALID, ids=ids(VALID))
def test_every_valid_vector_is_accepted_alike_in_every_encoding(case):
    raw = base64.b64decode(case["psbt"])
    summary = check_psbt(case["psbt"])
    for encoding in (raw, raw.hex(), raw.hex().upper(), f"  {case['psbt']}\n", f"\n{raw.hex()}\t\n",
                     case["psbt"].encode(), "\n".join(case["psbt"][k:k + 64] for k in range(0, len(case["psbt"]), 64))):
        assert check_psbt(encoding) == summary
    assert json.loads(json.dumps(summary)) == summary
    assert summary["version"] in (0, 2) and len(summary["txid"]) == 64 and summary["warnings"] == []


@pytest.mark.parametrize("case", VALID, ids=ids(VALID))
def test_summary_agrees_with_an_independent_reading(case):
    """embit's parser for what it reads alike; the txid rebuilt from embit's view of the fields."""
    summary = check_psbt(case["psbt"])
    if not summary["inputs"]:                   # embit cannot read a transaction without inputs
        raw = base64.b64decode(case["psbt"])
        unsigned = raw[8:8 + raw[7]]            # the first pair: key 0x00, a one-byte value length
        assert raw[5:7] == b"\x01\x00" and summary["txid"] == hashlib.sha256(
            hashlib.sha256(unsigned).digest()).digest()[::-1].hex()
        return
    psbt = PSBT.from_string(case["psbt"])
    assert len(summary["inputs"]) == len(psbt.inputs) and len(summary["outputs"]) == len(psbt.outputs)
    assert summary["global_xpubs"] == len(psbt.xpubs)
    for ours, theirs in zip(summary["inputs"], psbt.inputs):
        assert ours["outpoint"] == f"{theirs.txid.hex()}:{theirs.vout}"
        assert ours["partial_signatures"] == len(theirs.partial_sigs)
        assert ours["bip32_derivations"] == len(theirs.bip32_derivations)
        assert ours["has_witness_utxo"] == (theirs.witness_utxo is not None)
        assert ours["has_non_witness_utxo"] == (theirs.non_witness_utxo is not None)
        assert ours["sighash"] == theirs.sighash_type
        assert ours["finalized"] == (theirs.final_scriptsig is not None or theirs.final_scriptwitness is not None)
        if theirs.non_witness_utxo is not None:
            assert ours["value"] == theirs.non_witness_utxo.vout[theirs.vout].value
        elif theirs.witness_utxo is not None:
            assert ours["value"] == theirs.witness_utxo.value
        else:
            assert ours["value"] is None
    for ours, theirs in zip(summary["outputs"], psbt.outputs):
        assert (ours["value"], ours["script_pubkey"]) == (theirs.value, theirs.script_pubkey.data.hex())
    if summary["version"] == 0:
        assert summary["txid"] == summary["unique_id"] == psbt.tx.txid().hex()
        return
    # v2: the transaction BIP-370 defines, with the locktime its rules determine
    def txid(sequence=None):
        tx = Transaction(version=summary["tx_version"], locktime=summary["locktime"],
                         vin=[TransactionInput(i.txid, i.vout, sequence=i.sequence if sequence is None else sequence)
                              for i in psbt.inputs],
                         vout=[TransactionOutput(o.value, o.script_pubkey) for o in psbt.outputs])
        return tx.txid().hex()
    assert summary["txid"] == txid() and summary["unique_id"] == txid(sequence=0)


def test_known_summaries():
    first = check_psbt(BIP174["valid"][0]["psbt"])
    assert first == {
        "version": 0, "txid": "af2cac1e0e33d896d9d0751d66fcb2fa54b737c7a13199281fb57e4f497bb652",
        "unique_id": "af2cac1e0e33d896d9d0751d66fcb2fa54b737c7a13199281fb57e4f497bb652",
        "tx_version": 2, "locktime": 1257139,
        "inputs": [{"outpoint": "f61b1742ca13176464adb3cb66050c00787bb3a4eead37e985f2df1e37718126:0",
                    "value": 200_000_000, "has_witness_utxo": False, "has_non_witness_utxo": True, "sighash": None,
                    "partial_signatures": 0, "bip32_derivations": 0, "finalized": False}],
        "outputs": [{"value": 99_999_699, "script_pubkey": "76a914d0c59903c5bac2868760e90fd521a4665aa7652088ac",
                     "address": "mzYqZHTdciW2DvC6HRQygvWNbab9U6KdQY"},
                    {"value": 100_000_000, "script_pubkey": "a9143545e6e33b832c47050f24d3eeb93c9c03948bc787",
                     "address": "2Mx6uYKYGW5J6sV59e5NsdtCTsJYRxednbx"}],
        "fee": 301, "global_xpubs": 0, "complete": False, "warnings": []}
    mainnet = check_psbt(BIP174["valid"][0]["psbt"], network="main")
    assert [o["address"] for o in mainnet["outputs"]] == ["1L2tGENeoh4mSoiUZrSbs1J3jazSdJH9QS",
                                                          "36YhUacEtcnkfhSbxwm11wDCexLGBLgJF6"]
    multisig = check_psbt(BIP174["valid"][5]["psbt"])
    assert multisig["global_xpubs"] == 2 and multisig["inputs"][0]["bip32_derivations"] == 2
    assert multisig["outputs"][0]["address"] == "bcrt1q0vaqp07uznf809wzkaysr5ya5mh3xdtetmxlyr"
    assert check_psbt(BIP174["valid"][5]["psbt"], network="main")["outputs"][0]["address"].startswith("bc1q")
    finalized = check_psbt(BIP174["valid"][1]["psbt"])
    assert finalized["inputs"][0]["finalized"] and not finalized["inputs"][1]["finalized"] and not finalized["complete"]
    assert check_psbt(BIP174["valid"][8]["psbt"])["complete"] is False          # no inputs: never complete
    v2 = check_psbt(BIP370["valid"][1]["psbt"])
    assert (v2["version"], v2["tx_version"], v2["locktime"], v2["fee"]) == (2, 2, 0, 141)
    assert v2["txid"] != v2["unique_id"]            # BIP-370's unique id zeroes the sequences


@pytest.mark.parametrize("expected, case", LOCKTIME, ids=ids([c for _, c in LOCKTIME]))
def test_bip370_locktime_determination(expected, case):
    assert check_psbt(case["psbt"])["locktime"] == expected


@pytest.mark.parametrize("case", BIP370["locktime"]["none"], ids=ids(BIP370["locktime"]["none"]))
def test_bip370_unsatisfiable_locktime_is_refused(case):
    one_line_refusal(case["psbt"], "no locktime satisfies every input")


# -- hand-made damage -------------------------------------------------------------------------
def compact(n: int) -> bytes:
    return bytes([n]) if n < 0xFD else b"\xfd" + n.to_bytes(2, "little")


def kv(key: bytes, value: bytes) -> bytes:
    return compact(len(key)) + key + compact(len(value)) + value


def u32(n: int) -> bytes:
    return struct.pack("<I", n)


TXID = bytes(range(32))
SCRIPT = bytes.fromhex("0014") + bytes(20)


def v2_psbt(*, inputs=None, outputs=None, glob=b"", n_in=1, n_out=1) -> bytes:
    """A PSBTv2 of one input and one output unless told otherwise; each map's extra pairs appended."""
    inputs = inputs if inputs is not None else [b""]
    outputs = outputs if outputs is not None else [b""]
    out = b"psbt\xff" + kv(b"\x02", u32(2)) + kv(b"\x04", compact(n_in)) + kv(b"\x05", compact(n_out)) \
        + kv(b"\xfb", u32(2)) + glob + b"\x00"
    for extra in inputs:
        out += kv(b"\x0e", TXID) + kv(b"\x0f", u32(0)) + extra + b"\x00"
    for extra in outputs:
        out += kv(b"\x03", struct.pack("<q", 1000)) + kv(b"\x04", SCRIPT) + extra + b"\x00"
    return out


GOOD = base64.b64decode(BIP174["valid"][5]["psbt"])         # P2WSH 2-of-2 with global xpubs


def test_hand_made_v2_is_accepted():
    summary = check_psbt(v2_psbt())
    assert summary["outputs"] == [{"value": 1000, "script_pubkey": SCRIPT.hex(),
                                   "address": "bcrt1qqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqdku202"}]
    assert summary["inputs"][0]["outpoint"] == f"{TXID[::-1].hex()}:0" and summary["fee"] is None
    assert summary["locktime"] == 0 and summary["complete"] is False


@pytest.mark.parametrize("bad, message", [
    (GOOD[:-3], "truncated PSBT"),
    (GOOD[:-40], "truncated PSBT: output 0 key runs past the end"),
    (GOOD[:-10], "truncated PSBT: output 0 value runs past the end"),
    (GOOD[:GOOD.index(b"\x00\x01\x01\x2b") + 1], "1 inputs and 1 outputs, but the PSBT ends after 0 input maps"),
    (GOOD + b"\x00", "1 bytes of trailing data after the last output map"),
    (GOOD + b"garbage", "7 bytes of trailing data"),
    (b"psbt\x00" + GOOD[5:], "bad magic: the byte after 'psbt' must be the separator 0xff"),
    (base64.b64encode(b"psbt\x00" + GOOD[5:]), "separator 0xff"),
    (b"pbst\xff" + GOOD[5:], "not a PSBT"),
    (b"nonsense", "not a PSBT"),
    ("", "empty"),
    (b"psbt\xff", "truncated PSBT: global map key"),
    (b"psbt\xff\x00", "requires PSBT_GLOBAL_UNSIGNED_TX"),
    (v2_psbt(inputs=[kv(b"\x10", u32(1)) + kv(b"\x10", u32(2))]), "input 0: duplicate key 0x10"),
    (v2_psbt(outputs=[kv(b"\xfc\x01a\x00", b"") * 2]), "output 0: duplicate key 0xfc016100"),
    (v2_psbt(glob=kv(b"\x03", u32(0)) + kv(b"\x03", u32(1))), "global map: duplicate key 0x03"),
    (v2_psbt(n_out=2), "say 1 inputs and 2 outputs, but the PSBT ends after 1 output maps"),
    (v2_psbt(n_in=2), "input 1 PSBT_IN_SIGHASH_TYPE: 8 bytes"),      # the output map read as input 1
    (v2_psbt(n_out=0), "trailing data after the last output map .* 1 inputs and 0 outputs"),
    (v2_psbt(glob=kv(b"\x06", b"\x01\x02")), "PSBT_GLOBAL_TX_MODIFIABLE: 2 bytes, must be 1"),
    (v2_psbt(inputs=[kv(b"\x10", b"\x01")]), "PSBT_IN_SEQUENCE: 1 bytes, must be 4"),
    (b"psbt\xff" + b"\xfd\x01\x00\x00", "not minimally encoded"),
    (v2_psbt(inputs=[kv(b"\xfd\x01\x00", b"")]), "input 0 key type is a compact size that is not minimally encoded"),
    (v2_psbt().replace(kv(b"\xfb", u32(2)), kv(b"\xfb", u32(1))), "unsupported PSBT version 1"),
    (v2_psbt().replace(kv(b"\xfb", u32(2)), kv(b"\xfb", u32(3))), "unsupported PSBT version 3"),
    (v2_psbt(inputs=[kv(b"\x02" + bytes.fromhex("02" + "79be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798"),
                        b"\x30\x06\x02\x01\x01\x02\x01\x01")]), "PSBT_IN_PARTIAL_SIG: not a DER-encoded signature"),
    (v2_psbt(inputs=[kv(b"\x02" + bytes.fromhex("02" + "79be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798"),
                        b"\x30\x06\x02\x01\x01\x02\x01\x01\x05")]), "undefined sighash type 0x05"),
    (v2_psbt(inputs=[kv(b"\x06" + b"\x02" + bytes(32), u32(0))]), "PSBT_IN_BIP32_DERIVATION key: not a valid public key"),
    (v2_psbt(inputs=[kv(b"\x0b" + hashlib.sha256(b"x").digest(), b"y")]), "PSBT_IN_SHA256: the preimage does not hash"),
    (v2_psbt(inputs=[kv(b"\x0a" + bytes(19), b"y")]), "PSBT_IN_RIPEMD160 key: 19 bytes, must be 20"),
    (v2_psbt(inputs=[kv(b"\x01", struct.pack("<q", 5) + b"\x05ab")]), "PSBT_IN_WITNESS_UTXO runs past the end"),
    (v2_psbt(inputs=[kv(b"\x08", b"\x02\x01a")]), "PSBT_IN_FINAL_SCRIPTWITNESS runs past the end"),
    (v2_psbt(inputs=[kv(b"\x13", bytes(63))]), "PSBT_IN_TAP_KEY_SIG: 63 bytes, must be 64 or 65"),
    (v2_psbt(inputs=[kv(b"\x15" + bytes(34), b"\x51\xc0")]), "PSBT_IN_TAP_LEAF_SCRIPT key: control block of 34 bytes"),
    (v2_psbt(outputs=[kv(b"\x06", b"\x01\xc0\x01\x51")]), "PSBT_OUT_TAP_TREE: leaves do not form a complete taproot tree"),
    (v2_psbt(outputs=[kv(b"\x06", b"\x00\xc1\x01\x51")]), "PSBT_OUT_TAP_TREE: leaf with depth 0 or leaf version 0xc1"),
    (v2_psbt(outputs=[kv(b"\x05", bytes(33))]), "PSBT_OUT_TAP_INTERNAL_KEY: 33 bytes, must be 32"),
    (v2_psbt(outputs=[kv(b"\x03", bytes(8))]), "output 0: duplicate key 0x03"),
    (v2_psbt(outputs=[kv(b"\x03\x00", bytes(8))]), "PSBT_OUT_AMOUNT key: key must be the type alone"),
    (v2_psbt(inputs=[kv(b"\x00", Transaction(vin=[TransactionInput(bytes(32), 0)],
                                             vout=[TransactionOutput(1, Script(SCRIPT))]).serialize())]),
     "PSBT_IN_NON_WITNESS_UTXO is transaction .*, not .* which the input spends"),
], ids=lambda x: x if isinstance(x, str) else None)
def test_hand_made_damage_is_one_line(bad, message):
    one_line_refusal(bad, message)


def test_taproot_trees():
    leaf = lambda depth: bytes([depth, 0xC0]) + b"\x01\x51"
    for tree in ([0], [1, 1], [1, 2, 2], [2, 2, 1], [2, 3, 3, 1]):
        check_psbt(v2_psbt(outputs=[kv(b"\x06", b"".join(leaf(d) for d in tree))]))
    for tree in ([1], [0, 0], [0, 1], [2, 1, 2], [1, 1, 1], [2, 2]):
        one_line_refusal(v2_psbt(outputs=[kv(b"\x06", b"".join(leaf(d) for d in tree))]), "taproot tree")


def test_global_xpub_path_must_match_its_depth():
    raw = base64.b64decode(BIP174["valid"][7]["psbt"])      # one xpub at depth 3, path of 3 steps
    summary = check_psbt(raw)
    assert summary["global_xpubs"] == 1
    # the value: length 0x10 (fingerprint + 3 steps); drop one step and say so in the length
    start = raw.index(b"\x4f\x01") + 2 + 78
    assert raw[start] == 16
    one_line_refusal(raw[:start] + b"\x0c" + raw[start + 1:start + 13] + raw[start + 17:],
                     "PSBT_GLOBAL_XPUB: derivation path has 2 steps but the key's depth is 3")


def test_non_witness_utxo_must_have_the_spent_output():
    prev = Transaction(vin=[TransactionInput(bytes(32), 0)], vout=[TransactionOutput(5000, Script(SCRIPT))])
    good = v2_psbt().replace(kv(b"\x0e", TXID), kv(b"\x0e", prev.txid()[::-1]), 1)
    with_utxo = good.replace(kv(b"\x0f", u32(0)), kv(b"\x0f", u32(0)) + kv(b"\x00", prev.serialize()), 1)
    summary = check_psbt(with_utxo)
    assert summary["inputs"][0]["value"] == 5000 and summary["fee"] == 4000
    one_line_refusal(with_utxo.replace(kv(b"\x0f", u32(0)), kv(b"\x0f", u32(1)), 1), "spends output 1 of a transaction with 1 outputs")


def test_contradicting_witness_utxo_is_a_warning_and_the_verified_value_counts():
    prev = Transaction(vin=[TransactionInput(bytes(32), 0)], vout=[TransactionOutput(5000, Script(SCRIPT))])
    lie = kv(b"\x01", struct.pack("<q", 900_000) + compact(len(SCRIPT)) + SCRIPT)
    raw = v2_psbt().replace(kv(b"\x0e", TXID), kv(b"\x0e", prev.txid()[::-1]), 1) \
        .replace(kv(b"\x0f", u32(0)), kv(b"\x0f", u32(0)) + kv(b"\x00", prev.serialize()) + lie, 1)
    summary = check_psbt(raw)
    assert summary["inputs"][0]["value"] == 5000 and summary["fee"] == 4000
    assert len(summary["warnings"]) == 1 and "PSBT_IN_WITNESS_UTXO disagrees" in summary["warnings"][0]


def test_decode_gives_the_bytes_of_every_encoding():
    raw = base64.b64decode(BIP174["valid"][0]["psbt"])
    assert decode(raw) == decode(raw.hex()) == decode(BIP174["valid"][0]["psbt"] + "\n") == raw


def test_unknown_network_is_an_argument_error():
    with pytest.raises(ValueError, match="unknown network"):
        check_psbt(GOOD, network="mainnet")


def test_cli_exit_codes(tmp_path):
    good = tmp_path / "good.psbt"
    good.write_text(BIP174["valid"][5]["psbt"])
    ok = subprocess.run([sys.executable, "-m", "coordinator.cli.main", "psbt", "check", str(good)], capture_output=True, text=True)
    assert ok.returncode == 0 and json.loads(ok.stdout)["version"] == 0
    bad = tmp_path / "bad.psbt"
    bad.write_text(BIP174["invalid"][4]["psbt"])
    refused = subprocess.run([sys.executable, "-m", "coordinator.cli.main", "psbt", "check", str(bad)], capture_output=True, text=True)
    assert refused.returncode == 1 and len(refused.stderr.strip().splitlines()) == 1
    assert "duplicate key" in refused.stderr
    piped = subprocess.run([sys.executable, "-m", "coordinator.cli.main", "psbt", "check", "-"], input=base64.b64decode(
        BIP174["valid"][5]["psbt"]), capture_output=True)
    assert piped.returncode == 0


def test_random_damage_is_refused_in_one_line_or_summarized():
    """Bytes flipped, cut and inserted in every vector: a summary or a one-line PSBTError, nothing else."""
    rng = random.Random(174370)
    seeds = [base64.b64decode(c["psbt"]) for c in VALID + INVALID]
    for _ in range(3000):
        damaged = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 3)):
            if len(damaged) < 7:
                break
            pos = rng.randrange(5, len(damaged))
            op = rng.randrange(3)
            if op == 0:
                damaged[pos] ^= 1 << rng.randrange(8)
            elif op == 1:
                del damaged[pos:pos + rng.randint(1, 8)]
            else:
                damaged[pos:pos] = rng.randbytes(rng.randint(1, 4))
        try:
            json.dumps(check_psbt(bytes(damaged)))
        except PSBTError as e:
            assert "\n" not in str(e) and str(e)


def test_well_formed_taproot_and_other_fields_are_accepted():
    g = bytes.fromhex("0279be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798")
    leaf_hash, origin = bytes(range(32)), bytes(4) + u32(0x8000_0056)
    tap_input = (kv(b"\x01", struct.pack("<q", 7000) + b"\x22\x51\x20" + g[1:]) + kv(b"\x03", u32(0))
                 + kv(b"\x13", bytes(64)) + kv(b"\x14" + g[1:] + leaf_hash, bytes(65))
                 + kv(b"\x15" + b"\xc0" + g[1:] + bytes(32), b"\x51\xc0")
                 + kv(b"\x16" + g[1:], b"\x01" + leaf_hash + origin) + kv(b"\x17", g[1:]) + kv(b"\x18", bytes(32))
                 + kv(b"\x0c" + hash160(b"secret"), b"secret") + kv(b"\x0a" + ripemd160(b"x"), b"x")
                 + kv(b"\x0d" + hashlib.sha256(hashlib.sha256(b"y").digest()).digest(), b"y")
                 + kv(b"\x1a" + g, g + g) + kv(b"\x1b" + g + g, bytes(66)) + kv(b"\x1c" + g + g + leaf_hash, bytes(32))
                 + kv(b"\xfc\x05hello\x01extra", b"proprietary") + kv(b"\x99\x01", b"unknown"))
    tap_output = (kv(b"\x05", g[1:]) + kv(b"\x06", b"\x01\xc0\x01\x51\x01\xc0\x01\x52")
                  + kv(b"\x07" + g[1:], b"\x00" + origin) + kv(b"\x08" + g, g))
    summary = check_psbt(v2_psbt(inputs=[tap_input], outputs=[tap_output],
                                 glob=kv(b"\x03", u32(800_000)) + kv(b"\x06", b"\x07")))
    first = summary["inputs"][0]
    assert (first["value"], first["sighash"], first["partial_signatures"], first["bip32_derivations"]) == (7000, 0, 2, 1)
    assert summary["fee"] == 6000 and summary["locktime"] == 800_000 and summary["warnings"] == []
