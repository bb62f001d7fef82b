"""`custody psbt check` against every BIP-174 and BIP-370 test vector, in every encoding."""
from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import pytest

from custody.psbt_check import PSBTError, check_psbt

VECTORS = Path(__file__).with_name("vectors")
BIP174 = json.loads((VECTORS / "bip174.json").read_text())
BIP370 = json.loads((VECTORS / "bip370.json").read_text())


def ids(cases):
    return [c["description"][:60] for c in cases]


@pytest.mark.parametrize("case", BIP174["invalid"] + BIP370["invalid"], ids=ids(BIP174["invalid"] + BIP370["invalid"]))
def test_every_invalid_vector_is_refused(case):
    with pytest.raises(PSBTError):
        check_psbt(case["psbt"])


@pytest.mark.parametrize("case", BIP174["valid"] + BIP370["valid"], ids=ids(BIP174["valid"] + BIP370["valid"]))
def test_every_valid_vector_is_accepted_in_every_encoding(case):
    summary = check_psbt(case["psbt"])
    raw = base64.b64decode(case["psbt"])
    assert check_psbt(raw) == summary == check_psbt(raw.hex())
    assert len(summary["txid"]) == 64


@pytest.mark.parametrize("expected, case", [(int(k), c) for k, cases in BIP370["locktime"].items() if k != "none"
                                            for c in cases])
def test_bip370_locktime_determination(expected, case):
    assert check_psbt(case["psbt"])["locktime"] == expected


@pytest.mark.parametrize("case", BIP370["locktime"]["none"])
def test_bip370_unsatisfiable_locktime(case):
    with pytest.raises(PSBTError, match="locktime"):
        check_psbt(case["psbt"])


def test_hand_made_damage_gives_one_line():
    good = base64.b64decode(BIP174["valid"][5]["psbt"])
    for bad, message in ((good[:-3], "truncated|trailing"), (good + b"\x00", "trailing"),
                         (b"nonsense", "not a PSBT"), (good.replace(b"psbt\xff", b"pbst\xff", 1), "magic|not a PSBT")):
        with pytest.raises(PSBTError, match=message) as e:
            check_psbt(bad)
        assert "\n" not in str(e.value)


def test_cli_exit_codes(tmp_path):
    good = tmp_path / "good.psbt"
    good.write_text(BIP174["valid"][5]["psbt"])
    ok = subprocess.run([sys.executable, "-m", "custody.cli", "psbt", "check", str(good)], capture_output=True, text=True)
    assert ok.returncode == 0 and json.loads(ok.stdout)["version"] == 0
    bad = tmp_path / "bad.psbt"
    bad.write_text(BIP174["invalid"][4]["psbt"])
    refused = subprocess.run([sys.executable, "-m", "custody.cli", "psbt", "check", str(bad)], capture_output=True, text=True)
    assert refused.returncode == 1 and len(refused.stderr.strip().splitlines()) == 1
    piped = subprocess.run([sys.executable, "-m", "custody.cli", "psbt", "check", "-"], input=base64.b64decode(
        BIP174["valid"][5]["psbt"]), capture_output=True)
    assert piped.returncode == 0
