"""Proof of reserves end to end on the embedded node: the custodian's run (coins at H, PSBT, signatures,
package) and the auditor's verifier, with every attack the issue names failing the check it names."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import pytest
from embit import bip32
from embit.networks import NETWORKS
from embit.psbt import PSBT
from embit.script import Script
from embit.transaction import SIGHASH, Transaction, TransactionInput, TransactionOutput

from audit import bip127, commitment, proof_format, report, verify
from custody.bitcoin.policies import build_policy
from custody.bitcoin.psbt_builder import Coin, describe_inputs
from custody.bitcoin.signatures import finalize
from custody.errors import CustodyError
from custody.ledger import registry
from custody.ledger.sync import Syncer
from custody.reserves import proofs as reserves, service as reserve_service
from custody.store.db import open_database
from regtest.testwallet import TestWallet

from .conftest import hd_keys, mine_coins, sign_multisig_spend
from .support import start_node

SEED_BASE = 71
NONCE = "auditor-nonce-7f3a9c"
AUDIT = "2026-Q4"
MINER = TestWallet("reserves miner").address()


def roots(n: int = 3) -> list[bip32.HDKey]:
    return [bip32.HDKey.from_seed(hashlib.sha256(f"test device {SEED_BASE + i}".encode()).digest(),
                                  version=NETWORKS["regtest"]["xprv"]) for i in range(n)]


def sign(psbt_b64: str, signers: list[bip32.HDKey], sighash: int = SIGHASH.ALL) -> str:
    """What a software signer does: sign every coin input it holds a key for (input 0 is nobody's)."""
    psbt = PSBT.from_string(psbt_b64)
    for i, inp in enumerate(psbt.inputs[1:], start=1):
        for root in signers:
            for pub, der in inp.bip32_derivations.items():
                if der.fingerprint == root.my_fingerprint:
                    digest = psbt.tx.sighash_segwit(i, inp.witness_script, inp.witness_utxo.value, sighash)
                    inp.partial_sigs[pub] = root.derive(der.derivation).key.sign(digest).serialize() + bytes([sighash])
    return psbt.to_string()


@pytest.fixture(scope="module")
def world(rpc, wallet):
    """A 2-of-3 policy holding 1, 2 and 3 BTC (receive 0-2), one coin spent away (receive 4), and a
    coinbase paid straight to receive 5."""
    spec = build_policy("wsh-sortedmulti", 2, hd_keys(3, seed_base=SEED_BASE))
    funding = mine_coins(rpc, wallet, 2)
    spk = [spec.embit(0).derive(i).script_pubkey().data for i in range(6)]
    rpc.sendrawtransaction(wallet.sign([funding[0]], [(spk[0], 100_000_000), (spk[1], 200_000_000),
                                                      (spk[2], 300_000_000), (spk[4], 50_000_000),
                                                      (wallet.wpkh, funding[0].value - 650_002_000)]))
    rpc.generatetoaddress(1, MINER)
    paid = rpc.getblock(rpc.getbestblockhash(), 2)["tx"][1]
    spent_txid = rpc.sendrawtransaction(sign_multisig_spend(
        [SEED_BASE, SEED_BASE + 1, SEED_BASE + 2], [(paid["txid"], 3, 50_000_000, 0, 4)],
        [(wallet.wpkh, 49_990_000)]))
    rpc.generatetoaddress(1, MINER)
    coinbase_block = rpc.generatetodescriptor(1, spec.descriptor(0).split("#")[0].replace("/0/*", "/0/5"))[0]
    rpc.generatetoaddress(6, MINER)
    return {"spec": spec, "funding_txid": paid["txid"], "funded_at": rpc.getblockcount() - 8,
            "spent_txid": spent_txid, "spent_at": rpc.getblockcount() - 7,
            "coinbase_txid": rpc.getblock(coinbase_block)["tx"][0], "coinbase_at": rpc.getblockcount() - 6}


def coin(rpc, world, txid: str, vout: int, index: int) -> dict:
    info = rpc.getrawtransaction(txid, True)
    out = info["vout"][vout]
    return {"txid": txid, "vout": vout, "amount": int(out["value"] * 100_000_000), "branch": 0, "index": index,
            "height": rpc.getblockheader(info["blockhash"])["height"],
            "coinbase": "coinbase" in info["vin"][0]}


def funded_coins(rpc, world) -> list[dict]:
    return [coin(rpc, world, world["funding_txid"], n, n) for n in range(3)]


def craft(rpc, world, coins: list[dict], height: int, *, nonce: str = NONCE, kind: str = "bip322", fee: int = 0,
          sighash: int = SIGHASH.ALL, network: str = "regtest", duplicate: bool = False,
          commit_txid: bytes | None = None) -> dict:
    """A proof signed by two of the three keys, shaped as the test asks (honest unless told otherwise)."""
    spec = world["spec"]
    message = proof_format.compose_message("Acme Treasury", AUDIT, nonce, rpc.getbestblockhash(), height)
    listed = coins + coins[:1] if duplicate else coins
    tx = proof_format.unsigned_proof(message, kind, [(bytes.fromhex(c["txid"]), c["vout"], c["amount"]) for c in listed])
    tx.vout[0].value -= fee
    if commit_txid is not None:                    # another tool's idea of the commitment
        tx.vin[0].txid = commit_txid
    psbt = PSBT(tx, unknown={proof_format.PSBT_GLOBAL_GENERIC_SIGNED_MESSAGE: message})
    previous = {c["txid"]: bytes.fromhex(rpc.getrawtransaction(c["txid"])) for c in listed}
    describe_inputs(psbt.inputs[1:], spec, [Coin(c["txid"], c["vout"], c["amount"], c["branch"], c["index"],
                                                 spec.embit(0).derive(c["index"]).script_pubkey().data) for c in listed],
                    previous)
    signed = PSBT.from_string(sign(psbt.to_string(), roots()[:2], sighash))
    raw = finalize(signed, [None] + [2] * len(listed))
    return {"format": proof_format.PACKAGE_FORMAT, "network": network, "kind": kind, "custodian": "Acme Treasury",
            "audit": AUDIT, "nonce": nonce, "message": message.decode(), "height": height,
            "block_hash": rpc.getblockhash(height),
            "descriptors": [{"policy": "treasury", "descriptor": spec.descriptor(), "threshold": 2, "keys": 3,
                             "range": [0, 19]}],
            "coins": [{"outpoint": f"{c['txid']}:{c['vout']}", "amount": c["amount"], "descriptor": 0,
                       "branch": c["branch"], "index": c["index"], "height": c["height"], "coinbase": c["coinbase"]}
                      for c in listed],
            "total": sum(c["amount"] for c in listed), "txid": Transaction.parse(raw).txid().hex(),
            "transaction": raw.hex()}


def verdicts(package: dict, rpc, **kw) -> dict[str, str]:
    result = verify.verify(package, rpc, nonce=kw.pop("nonce", NONCE), audit=AUDIT, **kw)
    return {c.name: c.verdict for c in result.checks} | {"overall": result.verdict}


# -- the honest proof ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["bip322", "bip127"])
def test_an_honest_proof_is_valid_on_every_check(rpc, world, kind):
    height = rpc.getblockcount() - 6
    package = craft(rpc, world, funded_coins(rpc, world), height, kind=kind)
    result = verify.verify(package, rpc, nonce=NONCE, audit=AUDIT, workers=2)
    assert [(c.name, c.verdict) for c in result.checks] == [(name, "valid") for name in verify.CHECKS]
    assert result.verdict == "valid" and result.total == 600_000_000 and result.coins == 3


def test_a_proof_of_a_spent_coin_at_a_height_before_its_spend_is_valid(rpc, world):
    """The coin at receive 4 was spent at `spent_at`; at the height before, it was held."""
    height = world["spent_at"] - 1
    spent = coin(rpc, world, world["funding_txid"], 3, 4)
    package = craft(rpc, world, [spent], height)
    assert verdicts(package, rpc)["overall"] == "valid"


# -- the attacks, each failing the check it names -------------------------------------------------------------------
def test_anyonecanpay_signature_fails_the_sighash_check(rpc, world):
    package = craft(rpc, world, funded_coins(rpc, world), rpc.getblockcount() - 6,
                    sighash=SIGHASH.ALL | SIGHASH.ANYONECANPAY)
    v = verdicts(package, rpc)
    assert v["sighash"] == "invalid" and v["scripts"] == "valid" and v["overall"] == "invalid"


def test_a_non_zero_fee_fails_the_structure_check(rpc, world):
    v = verdicts(craft(rpc, world, funded_coins(rpc, world), rpc.getblockcount() - 6, fee=1_000), rpc)
    assert v["structure"] == "invalid" and v["overall"] == "invalid"


def test_a_duplicate_input_fails_the_structure_check(rpc, world):
    v = verdicts(craft(rpc, world, funded_coins(rpc, world), rpc.getblockcount() - 6, duplicate=True), rpc)
    assert v["structure"] == "invalid"


def test_a_coin_created_after_the_height_fails_the_chain_check(rpc, world):
    v = verdicts(craft(rpc, world, funded_coins(rpc, world), world["funded_at"] - 1), rpc)
    assert v["chain"] == "invalid"


def test_a_coin_spent_before_the_height_fails_the_chain_check(rpc, world):
    spent = coin(rpc, world, world["funding_txid"], 3, 4)
    v = verdicts(craft(rpc, world, funded_coins(rpc, world) + [spent], world["spent_at"]), rpc)
    assert v["chain"] == "invalid" and v["overall"] == "invalid"


def test_the_wrong_network_fails_the_challenge_check(rpc, world):
    v = verdicts(craft(rpc, world, funded_coins(rpc, world), rpc.getblockcount() - 6, network="main"), rpc)
    assert v["challenge"] == "invalid"


def test_a_message_from_another_audit_fails_the_challenge_check(rpc, world):
    package = craft(rpc, world, funded_coins(rpc, world), rpc.getblockcount() - 6, nonce="another-audits-nonce")
    assert verdicts(package, rpc)["challenge"] == "invalid"
    package = craft(rpc, world, funded_coins(rpc, world), rpc.getblockcount() - 6)
    result = verify.verify(package, rpc, nonce=NONCE, audit="2025-Q4")
    assert result.checks[0].verdict == "invalid" and "audit" in result.checks[0].detail


def test_a_relabelled_message_fails_the_commitment_check(rpc, world):
    """The signatures commit to input 0; a package that swaps in another message no longer matches it."""
    package = craft(rpc, world, funded_coins(rpc, world), rpc.getblockcount() - 6)
    forged = proof_format.compose_message("Acme Treasury", AUDIT, NONCE, package["block_hash"], package["height"])
    v = verdicts({**package, "message": forged.decode()}, rpc)
    assert v["commitment"] == "invalid"


def test_an_immature_coinbase_fails_the_maturity_check(rpc, world):
    cb = coin(rpc, world, world["coinbase_txid"], 0, 5)
    v = verdicts(craft(rpc, world, funded_coins(rpc, world) + [cb], rpc.getblockcount() - 6), rpc)
    assert v["maturity"] == "invalid" and v["chain"] == "valid"


def test_a_coin_outside_the_declared_policy_fails_the_policy_check(rpc, world):
    package = craft(rpc, world, funded_coins(rpc, world), rpc.getblockcount() - 6)
    narrow = {**package, "descriptors": [{**package["descriptors"][0], "range": [0, 1]}]}
    assert verdicts(narrow, rpc)["policy"] == "invalid"
    keys = hd_keys(3, seed_base=SEED_BASE)
    duplicated = build_policy("wsh-sortedmulti", 2, keys).descriptor().replace(keys[2], keys[1]).split("#")[0]
    twice = {**package, "descriptors": [{**package["descriptors"][0], "descriptor": duplicated}]}
    assert verdicts(twice, rpc)["policy"] == "invalid"


def test_an_inflated_total_fails_the_total_check(rpc, world):
    package = craft(rpc, world, funded_coins(rpc, world), rpc.getblockcount() - 6)
    v = verdicts({**package, "total": package["total"] + 1}, rpc)
    assert v["total"] == "invalid"


def test_a_forged_signature_fails_the_script_check(rpc, world):
    package = craft(rpc, world, funded_coins(rpc, world), rpc.getblockcount() - 6)
    tx = Transaction.parse(bytes.fromhex(package["transaction"]))
    sig = bytearray(tx.vin[2].witness.items[1])
    sig[10] ^= 1
    tx.vin[2].witness.items[1] = bytes(sig)
    v = verdicts({**package, "transaction": tx.serialize().hex()}, rpc)
    assert v["scripts"] == "invalid"


def test_a_height_not_yet_buried_is_inconclusive(rpc, world):
    package = craft(rpc, world, funded_coins(rpc, world), rpc.getblockcount() - 1)
    v = verdicts(package, rpc)
    assert v["chain"] == "inconclusive" and v["overall"] == "inconclusive"
    assert verdicts(package, rpc, min_depth=2)["overall"] == "valid"


# -- the custodian's run through the ledger, the CLI and the auditor's command ------------------------------------------
def test_a_run_from_the_ledger_to_the_auditors_signed_report(rpc, world, db_url, tmp_path):
    sessions = open_database(db_url)
    with sessions.begin() as s:
        registry.create_policy(s, "treasury", world["spec"])
    Syncer(sessions, rpc).sync_once()        # found by scantxoutset; the ledger follows the chain from here
    height = rpc.getblockcount()
    rpc.generatetoaddress(6, MINER)
    Syncer(sessions, rpc).sync_once()
    with sessions.begin() as s:
        run = reserves.create(s, rpc, nonce=NONCE, audit=AUDIT, custodian="Acme Treasury", height=height,
                              actor="carol")
        run_id, psbt = run.id, run.psbt
        assert run.coins == 3 and run.total == 600_000_000     # the immature coinbase at receive 5 is left out
        assert proof_format.parse_message(run.message.encode())["height"] == height
    with sessions.begin() as s, pytest.raises(CustodyError, match="not fully signed"):
        reserves.finalize_run(s, reserves.get_run(s, run_id), actor="carol")
    with sessions.begin() as s:
        run = reserves.get_run(s, run_id)
        reserves.add_signatures(s, run, sign(psbt, roots()[:1]), actor="alice")
        reserves.add_signatures(s, run, sign(psbt, roots()[2:]), actor="carol")
        package = reserves.finalize_run(s, run, actor="carol")
    with sessions.begin() as s:        # the custodian checks it as the auditor will, and keeps the signed report
        signed = reserve_service.self_check(s, rpc, run_id, actor="carol")
        assert signed["report"]["verdict"] == "valid" and reserves.get_run(s, run_id).verdict == "valid"
        assert report.check(signed)["package_sha256"] == hashlib.sha256(reserves.get_run(s, run_id).package.encode()).hexdigest()
        assert "custodian self-check" in reserve_service.report_html(s, run_id)
    (tmp_path / "package.json").write_text(json.dumps(package))
    node = rpc.url.replace("http://", f"http://{rpc._user}:{rpc._password}@") if rpc._user else rpc.url
    cmd = [sys.executable, "-m", "audit.cli", "verify", str(tmp_path / "package.json"), "--node", node,
           "--nonce", NONCE, "--audit", AUDIT, "--key", str(tmp_path / "auditor.key"), "--auditor", "Dana Audit LLP",
           "--report", str(tmp_path / "report.json"), "--html", str(tmp_path / "report.html")]
    if rpc._cookie_file:
        cmd += ["--cookie", str(rpc._cookie_file)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "verdict: valid: 600000000 sat in 3 coins" in done.stdout
    signed = json.loads((tmp_path / "report.json").read_text())
    assert report.check(signed)["verdict"] == "valid"
    assert "Dana Audit LLP" in (tmp_path / "report.html").read_text()
    check = [sys.executable, "-m", "audit.cli", "check-report", str(tmp_path / "report.json")]
    assert subprocess.run(check, capture_output=True, timeout=60).returncode == 0
    signed["report"]["total"] += 1
    (tmp_path / "report.json").write_text(json.dumps(signed))
    done = subprocess.run(check, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "changed after signing" in done.stderr
    wrong = [a if a != NONCE else "someone-elses-nonce" for a in cmd]
    done = subprocess.run(wrong, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "verdict: invalid" in done.stdout


def test_a_run_needs_a_ledger_that_applied_the_height(rpc, world, tmp_path):
    sessions = open_database(f"sqlite:///{tmp_path}/empty.db")
    with sessions.begin() as s:
        registry.create_policy(s, "treasury", world["spec"])
    with sessions.begin() as s, pytest.raises(CustodyError, match="custody sync"):
        reserves.create(s, rpc, nonce=NONCE, audit=AUDIT, custodian="Acme Treasury", actor="carol")
    Syncer(sessions, rpc).sync_once()
    with sessions.begin() as s, pytest.raises(CustodyError, match="since height"):
        reserves.create(s, rpc, nonce=NONCE, audit=AUDIT, custodian="Acme Treasury", actor="carol",
                        height=world["funded_at"])
    with sessions.begin() as s, pytest.raises(CustodyError, match="nonce"):
        reserves.create(s, rpc, nonce="short", audit=AUDIT, custodian="Acme Treasury", actor="carol")


def test_block_h_reorganised_away_fails_the_chain_check(rpc, world, tmp_path):
    """Last in the module: it replaces the node's last block."""
    package = craft(rpc, world, funded_coins(rpc, world), rpc.getblockcount())
    assert verdicts(package, rpc, min_depth=1)["overall"] == "valid"
    other = start_node(tmp_path / "b")
    try:
        from custody.chain.node_client import NodeClient
        rpc_b = NodeClient(other.url, cookie_file=other.cookie_file)
        for h in range(1, rpc.getblockcount()):
            rpc_b.submitblock(rpc.getblock(rpc.getblockhash(h), 0))
        for block in rpc_b.generatetoaddress(2, TestWallet("miner b").address()):
            rpc.submitblock(rpc_b.getblock(block, 0))
        assert rpc.getblockhash(package["height"]) != package["block_hash"]
        v = verdicts(package, rpc, min_depth=1)
        assert v["chain"] == "invalid" and v["overall"] == "invalid"
    finally:
        other.stop()


def test_a_package_that_is_not_one_is_refused_in_one_line(tmp_path, rpc):
    (tmp_path / "p.json").write_text('{"format": "something else"}')
    done = subprocess.run([sys.executable, "-m", "audit.cli", "verify", str(tmp_path / "p.json"), "--node", rpc.url,
                           "--nonce", NONCE, "--key", str(tmp_path / "k")], capture_output=True, text=True)
    assert done.returncode == 1 and done.stderr.count("\n") == 1 and "not a proof-of-reserves package" in done.stderr


def test_the_verifiers_parser_reads_a_proof_as_embit_does_and_refuses_truncation(rpc, world):
    from audit import txparse
    raw = bytes.fromhex(craft(rpc, world, funded_coins(rpc, world), rpc.getblockcount() - 6)["transaction"])
    ours, theirs = txparse.parse(raw), Transaction.parse(raw)
    assert ours.txid == theirs.txid().hex() and ours.version == theirs.version
    assert [(i.txid, i.vout, i.sequence, i.witness) for i in ours.inputs] == \
        [(i.txid.hex(), i.vout, i.sequence, i.witness.items) for i in theirs.vin]
    assert ours.outputs == [(o.value, o.script_pubkey.data) for o in theirs.vout]
    for bad in (raw[:-1], raw + b"\x00", raw[:50]):
        with pytest.raises(ValueError):
            txparse.parse(bad)


def test_a_bip127_run_puts_the_message_on_input_0_only(rpc, world, tmp_path):
    sessions = open_database(f"sqlite:///{tmp_path}/bip127.db")
    with sessions.begin() as s:
        registry.create_policy(s, "treasury", world["spec"])
    Syncer(sessions, rpc).sync_once()
    for _ in range(2):                        # a second PSBT in the same process must not inherit the first's fields
        with sessions.begin() as s:
            run = reserves.create(s, rpc, nonce=NONCE, audit=AUDIT, custodian="Acme Treasury", kind="bip127",
                                  actor="carol")
            psbt = PSBT.from_string(run.psbt)
            assert psbt.inputs[0].unknown == {b"\x09": run.message.encode()}
            assert all(not i.unknown for i in psbt.inputs[1:])
            reserves.add_signatures(s, run, sign(run.psbt, roots()[:2]), actor="alice")
            package = reserves.finalize_run(s, run, actor="carol")
            exported = reserves.bip127_psbt(run)
    assert verdicts(package, rpc, min_depth=1)["commitment"] == "valid"
    # the BIP-127 file, read back by the auditor's importer, is the same proof
    (tmp_path / "proof.psbt").write_text(exported)
    node = rpc.url.replace("http://", f"http://{rpc._user}:{rpc._password}@") if rpc._user else rpc.url
    cmd = [sys.executable, "-m", "audit.cli", "import-bip127", str(tmp_path / "proof.psbt"), "--node", node,
           "--descriptor", world["spec"].descriptor(), "--last-index", "19", "--height", str(package["height"]),
           "--out", str(tmp_path / "imported.json")]
    if rpc._cookie_file:
        cmd += ["--cookie", str(rpc._cookie_file)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "commitment: sha256 with prefix (BIP-127)" in done.stdout
    imported = json.loads((tmp_path / "imported.json").read_text())
    assert imported["transaction"] == package["transaction"] and imported["total"] == package["total"]
    assert verdicts(imported, rpc, min_depth=1)["overall"] == "valid"
    with sessions.begin() as s, pytest.raises(CustodyError, match="bip322 form"):
        run = reserves.create(s, rpc, nonce=NONCE, audit=AUDIT, custodian="Acme Treasury", actor="carol")
        reserves.add_signatures(s, run, sign(run.psbt, roots()[:2]), actor="alice")
        reserves.finalize_run(s, run, actor="carol")
        reserves.bip127_psbt(run)


def bip127_file(package: dict, rpc) -> bytes:
    """The package's proof as another tool would write its BIP-127 file."""
    tx = Transaction.parse(bytes.fromhex(package["transaction"]))
    unsigned = Transaction(version=tx.version, locktime=tx.locktime, vout=tx.vout,
                           vin=[TransactionInput(i.txid, i.vout, sequence=i.sequence) for i in tx.vin])
    psbt = PSBT(unsigned, unknown={})
    psbt.inputs[0].unknown = {b"\x09": package["message"].encode()}
    for scope, vin, c in zip(psbt.inputs[1:], tx.vin[1:], package["coins"]):
        out = rpc.gettxout(vin.txid.hex(), vin.vout, False)
        scope.final_scriptwitness = vin.witness
        scope.witness_utxo = TransactionOutput(c["amount"], Script(bytes.fromhex(out["scriptPubKey"]["hex"])))
    return psbt.serialize()


@pytest.mark.parametrize("variant", sorted(commitment.variants(b"x")))
def test_a_bip127_file_reports_its_commitment_variant_and_only_the_standard_one_verifies(rpc, world, variant):
    height = rpc.getblockcount() - 6
    message = proof_format.compose_message("Acme Treasury", AUDIT, NONCE, rpc.getbestblockhash(), height)
    digest = commitment.variants(message)[variant]
    package = craft(rpc, world, funded_coins(rpc, world), height, kind="bip127", commit_txid=digest[::-1])
    proof = bip127.read(bip127_file(package, rpc))
    assert proof.variant == variant and proof.message == message
    imported = bip127.to_package(proof, rpc, height=height, network="regtest",
                                 descriptors=[bip127.declare(world["spec"].descriptor(), 19)])
    result = verify.verify(imported, rpc, nonce=NONCE, audit=AUDIT)
    if variant == commitment.STANDARD:
        assert result.verdict == "valid"
    else:
        assert result.checks[1].name == "commitment" and result.checks[1].verdict == "invalid"
        assert variant in result.checks[1].detail


def test_a_file_that_is_not_a_bip127_proof_is_refused(rpc, world):
    with pytest.raises(bip127.Bip127Error, match="not a PSBT"):
        bip127.read(b"hello")
    package = craft(rpc, world, funded_coins(rpc, world), rpc.getblockcount() - 6)
    psbt = PSBT.parse(bip127_file(package, rpc))
    psbt.inputs[0].unknown = {}
    with pytest.raises(bip127.Bip127Error, match="PSBT_IN_POR_COMMITMENT"):
        bip127.read(psbt.serialize())


def test_the_custodians_cli_creates_signs_finalizes_and_checks_a_run(node, rpc, world, tmp_path):
    db = f"sqlite:///{tmp_path}/cli.db"
    sessions = open_database(db)
    with sessions.begin() as s:
        registry.create_policy(s, "treasury", world["spec"])
    Syncer(sessions, rpc).sync_once()
    env = {**os.environ, "CUSTODY_DB": db, "CUSTODY_NODE": node.url, "CUSTODY_NODE_COOKIE": str(node.cookie_file),
           "CUSTODY_ACTOR": "carol"}

    def custody(*args, ok=True):
        done = subprocess.run([sys.executable, "-m", "coordinator.cli.main", "--json", "reserves", *args], capture_output=True,
                              text=True, env=env, timeout=300)
        assert (done.returncode == 0) == ok, done.stderr
        return json.loads(done.stdout) if ok and done.stdout.strip().startswith(("{", "[")) else done

    refused = custody("create", "--auditor-nonce", "short", "--audit", AUDIT, "--custodian", "Acme", ok=False)
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1 and "nonce" in refused.stderr
    run = custody("create", "--auditor-nonce", NONCE, "--audit", AUDIT, "--custodian", "Acme Treasury")
    assert run["state"] == "signing" and run["coins"] == 3 and f"nonce: {NONCE}" in run["message"]
    psbt = custody("psbt", str(run["id"])).stdout.strip()
    (tmp_path / "signed.psbt").write_text(sign(psbt, roots()[1:]))
    assert len(custody("sign", str(run["id"]), str(tmp_path / "signed.psbt"))["new_signers"]) == 2
    rpc.generatetoaddress(1, MINER)
    done = custody("finalize", str(run["id"]), "--out", str(tmp_path / "package.json"))
    assert done["state"] == "complete"
    assert custody("check", str(run["id"]))["verdict"] == "valid"
    assert [r["verdict"] for r in custody("list")] == ["valid"]
    assert "bip322 form" in custody("export-bip127", str(run["id"]), ok=False).stderr


def test_a_package_whose_coin_list_disagrees_with_the_transaction_fails_closed(rpc, world):
    package = craft(rpc, world, funded_coins(rpc, world), rpc.getblockcount() - 6)
    v = verdicts({**package, "coins": package["coins"][:-1], "total": package["total"]}, rpc)
    assert v["structure"] == "invalid" and v["scripts"] == "invalid" and v["overall"] == "invalid"
    v = verdicts({**package, "coins": package["coins"] + package["coins"][:1]}, rpc)
    assert v["overall"] == "invalid"
