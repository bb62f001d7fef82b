"""Liabilities as a Merkle sum tree: every client's inclusion proof checks against the published root and
total, and each way a custodian could under-report fails with a message naming it."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from audit import liabilities as lia

SECRET = b"\x11" * 32


def balances(n: int) -> list[tuple[str, int]]:
    return [(f"client-{i}", 1_000 * (i + 1)) for i in range(n)]


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 13])
def test_every_client_is_included_and_the_total_adds_up(n):
    tree = lia.build(balances(n), SECRET)
    published = tree.published()
    assert published["total"] == sum(v for _, v in balances(n)) and published["leaves"] == n
    for client, value in balances(n):
        assert lia.verify_inclusion(tree.proof(client), root=published["root"], total=published["total"]) == value
    assert lia.verify_tree(lia.export_levels(tree)) == (published["root"], published["total"])


def test_a_parent_commits_to_each_childs_sum_so_a_shifted_sum_is_caught():
    """Maxwell's flaw: moving value from one child's sum to the other keeps the parent's total. Here the
    parent hash covers both sums, so the proof no longer reaches the root."""
    tree = lia.build(balances(4), SECRET)
    proof = tree.proof("client-0")
    proof["balance"] += 500
    proof["path"][0]["sum"] -= 500
    with pytest.raises(lia.LiabilityError, match="does not lead to the published root"):
        lia.verify_inclusion(proof, root=tree.published()["root"])


def test_negative_sums_and_malformed_proofs_are_refused():
    tree = lia.build(balances(4), SECRET)
    proof = tree.proof("client-1")
    proof["path"][1]["sum"] = -1
    with pytest.raises(lia.LiabilityError, match="sums are non-negative"):
        lia.verify_inclusion(proof)
    broken = tree.proof("client-1")
    broken["balance"] = "1000"
    with pytest.raises(lia.LiabilityError, match="whole number"):
        lia.verify_inclusion(broken)
    del broken["salt"]
    with pytest.raises(lia.LiabilityError, match="malformed"):
        lia.verify_inclusion(broken)


def test_a_tree_node_whose_sums_do_not_add_up_is_named():
    levels = lia.export_levels(lia.build(balances(5), SECRET))
    digest, total = levels[1][0]
    levels[1][0] = (digest, total - 1)
    with pytest.raises(lia.LiabilityError, match="node 0 at level 1: sums .* do not make"):
        lia.verify_tree(levels)
    levels = lia.export_levels(lia.build(balances(5), SECRET))
    levels[0][1] = (levels[0][1][0], levels[0][1][1] + 7)          # a leaf's sum changed, parent kept
    with pytest.raises(lia.LiabilityError, match="level 1"):
        lia.verify_tree(levels)


def test_an_omitted_client_finds_no_proof_against_the_published_root():
    everyone = balances(6)
    published = lia.build(everyone[:3] + everyone[4:], SECRET).published()   # client-3 left out
    theirs = lia.build(everyone, SECRET).proof("client-3")
    with pytest.raises(lia.LiabilityError, match="not in the tree"):
        lia.verify_inclusion(theirs, root=published["root"], total=published["total"])


def test_leaves_are_salted_per_client():
    tree = lia.build([("alice", 5), ("bob", 5)], SECRET)
    assert tree.salts[0] != tree.salts[1] and tree.levels[0][0][0] != tree.levels[0][1][0]
    other = lia.build([("alice", 5), ("bob", 5)], b"\x22" * 32)
    assert other.root != tree.root                 # without the secret, a leaf cannot be recomputed


@pytest.mark.parametrize("csv_text, message", [
    ("client,balance\nalice,-1\n", "negative"),
    ("client,balance\nalice,0.000000001\n", "whole number of satoshis"),
    ("client,balance\nalice,1.5sat\n", "whole number of satoshis"),
    ("client,balance\nalice,1\nalice,2\n", "appears twice"),
    ("client,balance\nalice,lots\n", "not an amount"),
    ("name,amount\nalice,1\n", "header"),
    ("client,balance\nalice,nan\n", "whole number"),
    ("client,balance\nalice,21000001\n", "more bitcoin than exists"),
])
def test_bad_balances_are_refused(csv_text, message):
    with pytest.raises(lia.LiabilityError, match=message):
        lia.read_csv(csv_text)


def test_balances_parse_exactly():
    assert lia.read_csv("client,balance\na,0.1\nb,12345sat\nc,1btc\n") == [("a", 10_000_000), ("b", 12_345),
                                                                        ("c", 100_000_000)]


def test_solvency():
    assert lia.solvency(100, 150)["verdict"] == "valid"
    assert lia.solvency(151, 150) == {"liabilities": 151, "reserves": 150, "verdict": "invalid", "surplus": -1}


def test_a_client_checks_their_proof_with_one_command(tmp_path):
    (tmp_path / "clients.csv").write_text("client,balance\nalice,0.5\nbob,1.25\ncarol,2000sat\n")

    def audit(*argv):
        return subprocess.run([sys.executable, "-m", "audit.cli", *argv], capture_output=True, text=True)
    built = audit("liabilities", "build", str(tmp_path / "clients.csv"), "--out", str(tmp_path / "out"))
    assert built.returncode == 0, built.stderr
    root = json.loads((tmp_path / "out" / "root.json").read_text())
    assert root["total"] == 175_002_000 and root["leaves"] == 3
    proof = tmp_path / "out" / "proofs" / "000001.json"
    ok = audit("liabilities", "check", str(proof), "--root", root["root"], "--total", str(root["total"]))
    assert ok.returncode == 0 and "bob holds 125000000 sat" in ok.stdout
    wrong = audit("liabilities", "check", str(proof), "--root", "00" * 32)
    assert wrong.returncode == 1 and wrong.stderr.count("\n") == 1 and "not in the tree" in wrong.stderr
    assert audit("liabilities", "verify-tree", str(tmp_path / "out" / "tree.json")).returncode == 0
    bad = audit("liabilities", "build", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "x"))
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1
