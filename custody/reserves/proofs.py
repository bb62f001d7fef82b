"""Proof of reserves, the custodian's side: the coins held at the auditor's height, the proof PSBT the
quorum signs, and the package the auditor verifies.

The proof's shape (message, commitment input, one OP_RETURN output burning the exact total) is
`audit.proof_format`'s, so custodian, signer and auditor read one definition. Coins come from the
ledger as it stood at height H (created at or before H, not spent at or before H); the ledger must
have applied block H as the node knows it, or the run is refused. The PSBT goes through the same
checks as a spend's: uploads are merged by `signatures.merge_upload`, devices sign through HWI, and every
new signature is attributed to its device when stored (`devices.attribute_signers` refuses a barred one).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from embit.psbt import DerivationPath, PSBT
from embit.transaction import Transaction
from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session

from audit import proof_format

from custody.bitcoin.psbt_builder import BuildError, Coin, describe_inputs
from custody.bitcoin.signatures import finalize, is_complete, merge_encoded, Merged, SignatureError, signed_fingerprints
from custody.chain.node_client import NodeClient
from custody.devices import inventory as devices, signing
from custody.errors import CustodyError
from custody.eventlog import checkpoints
from custody.eventlog.log import record
from custody.ledger.models import Address, Block, Policy, SigningDevice, Utxo
from custody.ledger.registry import get_policy, spec_of
from custody.reserves.models import ReserveRun, ReserveSchedule

MAX_COINS = 200_000
COINBASE_MATURITY = 100


@dataclass(frozen=True)
class HeldCoin:
    utxo: Utxo
    address: Address
    policy: Policy


def coins_at(session: Session, policies: list[Policy], height: int) -> list[HeldCoin]:
    """Every coin of the policies that existed at `height`: confirmed at or before it and not spent by a
    transaction confirmed at or before it, leaving out coinbase outputs not yet spendable in the next
    block (they are not reserves yet). Ordered by policy, then outpoint, so a run is reproducible."""
    ids = {p.id: p for p in policies}
    rows = session.execute(
        select(Utxo, Address).join(Address, Address.id == Utxo.address_id)
        .where(Utxo.policy_id.in_(ids), Utxo.height.is_not(None), Utxo.height <= height,
               or_(Utxo.spent_height.is_(None), Utxo.spent_height > height),
               or_(Utxo.coinbase.is_(False), Utxo.height <= height + 1 - COINBASE_MATURITY))
        .order_by(Utxo.policy_id, Utxo.txid, Utxo.vout)).all()
    return [HeldCoin(u, a, ids[u.policy_id]) for u, a in rows]


def _policies(session: Session, names: list[str] | None) -> list[Policy]:
    if names:
        return [get_policy(session, n) for n in dict.fromkeys(names)]
    chosen = list(session.scalars(select(Policy).where(Policy.status != "retired").order_by(Policy.id)))
    if not chosen:
        raise CustodyError("there is no policy to prove: create one first")
    return chosen


def _check_ledger_at(session: Session, client: NodeClient, height: int) -> str:
    """The hash of block `height`, after checking the ledger applied that very block."""
    tip = client.getblockcount()
    if not 0 <= height <= tip:
        raise CustodyError(f"height {height} is not on the node's chain (its tip is at {tip})")
    block_hash = client.getblockhash(height)
    ours = session.get(Block, height)
    if ours is None or ours.hash != block_hash:
        first = session.scalar(select(func.min(Block.height)))
        if first is not None and height < first:
            raise CustodyError(f"the ledger has followed the chain since height {first} only; choose a height at "
                               "or after it")
        raise CustodyError(f"the ledger has not applied block {height} as the node has it: run `custody sync` first")
    return block_hash


def create(session: Session, client: NodeClient, *, nonce: str, audit: str, custodian: str,
           policies: list[str] | None = None, height: int | None = None, kind: str = "bip322",
           actor: str = "coordinator") -> ReserveRun:
    """Start a run: find the coins held at `height` (default: the tip), write the message and build the
    proof PSBT for the quorum to sign."""
    if kind not in proof_format.KINDS:
        raise CustodyError(f"unknown proof kind {kind!r}: use one of {', '.join(proof_format.KINDS)}")
    chosen = _policies(session, policies)
    if len({p.network for p in chosen}) != 1:
        raise CustodyError("the policies of one proof must be on one network")
    height = client.getblockcount() if height is None else height
    block_hash = _check_ledger_at(session, client, height)
    try:
        message = proof_format.compose_message(custodian, audit, nonce, client.getbestblockhash(), height)
    except proof_format.ProofFormatError as e:
        raise CustodyError(str(e)) from None
    held = coins_at(session, chosen, height)
    if not held:
        raise CustodyError(f"the policies {', '.join(p.name for p in chosen)} held no coins at height {height}")
    if len(held) > MAX_COINS:
        raise CustodyError(f"{len(held)} coins is more than one proof carries ({MAX_COINS}); prove fewer policies")
    psbt = _build_psbt(client, message, kind, held)
    run = ReserveRun(audit=audit, nonce=nonce, custodian=custodian, kind=kind, height=height, block_hash=block_hash,
                     message=message.decode(), policies=json.dumps([p.name for p in chosen]), coins=len(held),
                     total=sum(h.utxo.value for h in held), state="signing", psbt=psbt.to_string(), created_by=actor)
    session.add(run)
    session.flush()
    record(session, "reserves.created", actor, f"reserves:{run.id}",
           {"audit": audit, "nonce": nonce, "height": height, "block_hash": block_hash, "kind": kind,
            "coins": run.coins, "total": run.total, "message_sha256": hashlib.sha256(message).hexdigest()})
    return run


def _build_psbt(client: NodeClient, message: bytes, kind: str, held: list[HeldCoin]) -> PSBT:
    tx = proof_format.unsigned_proof(message, kind, [(bytes.fromhex(h.utxo.txid), h.utxo.vout, h.utxo.value)
                                                     for h in held])
    psbt = PSBT(tx, unknown={proof_format.PSBT_GLOBAL_GENERIC_SIGNED_MESSAGE: message})
    if kind == "bip322":
        psbt.inputs[0].non_witness_utxo = proof_format.to_spend(message)
    else:
        psbt.inputs[0].unknown = {proof_format.PSBT_IN_POR_COMMITMENT: message}   # embit shares one default dict
    previous = {}
    for h in held:
        if h.utxo.txid not in previous:
            previous[h.utxo.txid] = bytes.fromhex(client.getrawtransaction(h.utxo.txid))
    start = 1
    for policy, group in _by_policy(held):
        spec = spec_of(policy)
        coins = [Coin(h.utxo.txid, h.utxo.vout, h.utxo.value, h.address.branch, h.address.index,
                      h.address.script_pubkey) for h in group]
        try:
            describe_inputs(psbt.inputs[start:start + len(group)], spec, coins, previous)
        except BuildError as e:
            raise CustodyError(str(e)) from None
        for key in spec.all_keys:
            psbt.xpubs[key.hdkey] = DerivationPath(bytes.fromhex(key.fingerprint), list(key.path))
        start += len(group)
    return psbt


def _by_policy(held: list[HeldCoin]) -> list[tuple[Policy, list[HeldCoin]]]:
    groups: dict[int, list[HeldCoin]] = {}
    for h in held:
        groups.setdefault(h.policy.id, []).append(h)
    return [(group[0].policy, group) for group in groups.values()]


def get_run(session: Session, run_id: int) -> ReserveRun:
    run = session.get(ReserveRun, run_id)
    if run is None:
        raise CustodyError(f"no proof-of-reserves run #{run_id}")
    return run


def _run_coins(session: Session, run: ReserveRun, tx) -> list[Utxo]:
    """The ledger's rows for the proof's coins (inputs 1..n of `tx`), in input order."""
    wanted = [(vin.txid.hex(), vin.vout) for vin in tx.vin[1:]]
    rows = {}
    txids = sorted({txid for txid, _ in wanted})
    for start in range(0, len(txids), 500):
        for utxo in session.scalars(select(Utxo).where(Utxo.txid.in_(txids[start:start + 500]))):
            rows[(utxo.txid, utxo.vout)] = utxo
    missing = next((o for o in wanted if o not in rows), None)
    if missing is not None:
        raise CustodyError(f"coin {missing[0]}:{missing[1]} of run #{run.id} is no longer in the ledger")
    return [rows[o] for o in wanted]


def add_signatures(session: Session, run: ReserveRun, upload: bytes | str, *, actor: str) -> list[str]:
    """Verify and merge a signed copy of the proof PSBT; returns the fingerprints that newly signed."""
    stored = signing_input(run)
    return store_signatures(session, run, merge_signatures(stored, upload), based_on=stored, actor=actor)


class SignaturesChanged(CustodyError):
    """The run's PSBT changed between reading it and storing a merge made from it."""


def signing_input(run: ReserveRun) -> str:
    """The stored proof PSBT, for a run collecting signatures."""
    if run.state != "signing":
        raise CustodyError(f"run #{run.id} is {run.state}; it is not collecting signatures")
    return run.psbt


def merge_signatures(stored: str, upload: bytes | str) -> Merged:
    """The CPU-heavy half of add_signatures, without the database (a worker process may run it)."""
    try:
        return merge_encoded(stored, upload)
    except SignatureError as e:
        raise CustodyError(str(e)) from None


def store_signatures(session: Session, run: ReserveRun, merged: Merged, *, based_on: str, actor: str) -> list[str]:
    """Store a merge made from the PSBT `based_on`; SignaturesChanged (nothing written) when another
    upload was stored after it was read."""
    if not merged.new_signatures:
        return []
    policy_ids = [get_policy(session, name).id for name in json.loads(run.policies)]
    held_by = devices.attribute_signers(session, merged.signers, policy_ids)   # refuses a barred device
    stored = session.execute(update(ReserveRun).where(ReserveRun.id == run.id, ReserveRun.psbt == based_on,
                                                      ReserveRun.state == "signing")
                             .values(psbt=merged.psbt)).rowcount
    if not stored:
        raise SignaturesChanged(f"run #{run.id} changed while this upload was verified (another signature "
                                "arrived, or it was finalized): nothing was stored")
    record(session, "reserves.signed", actor, f"reserves:{run.id}",
           {"signatures": merged.new_signatures, "signers": merged.signers, "devices": held_by})
    return merged.signers


def signers(run: ReserveRun) -> dict[str, int]:
    return signed_fingerprints(PSBT.from_string(run.psbt))


def finalize_run(session: Session, run: ReserveRun, *, actor: str) -> dict:
    """Assemble the signed proof and write the package the auditor verifies."""
    if run.state != "signing":
        raise CustodyError(f"run #{run.id} is {run.state}")
    psbt = PSBT.from_string(run.psbt)
    policies = [get_policy(session, n) for n in json.loads(run.policies)]
    coins = _run_coins(session, run, psbt.tx)
    threshold = {p.id: p.threshold for p in policies}
    thresholds: list[int | None] = [None] + [threshold[u.policy_id] for u in coins]   # input 0: nobody's
    if not is_complete(psbt, thresholds):
        raise CustodyError(f"run #{run.id} is not fully signed yet: signatures so far {signed_fingerprints(psbt)}")
    try:
        raw = finalize(psbt, thresholds)
    except SignatureError as e:
        raise CustodyError(str(e)) from None
    package = _package(session, run, raw, policies, coins)
    # the event log's head, signed: the auditor keeps it and checks later ones never contradict it
    package["event_log"] = checkpoints.create(session, destination=f"reserves:{run.id}", actor=actor)
    run.package = json.dumps(package, indent=1)
    run.state, run.finalized_at = "complete", datetime.now(timezone.utc)
    record(session, "reserves.finalized", actor, f"reserves:{run.id}",
           {"txid": package["txid"], "total": run.total, "coins": run.coins,
            "package_sha256": hashlib.sha256(run.package.encode()).hexdigest()})
    return package


def _package(session: Session, run: ReserveRun, raw: bytes, policies: list[Policy], coins: list[Utxo]) -> dict:
    """What the auditor needs and nothing they must trust: every claim here is checked on their node."""
    position = {p.id: n for n, p in enumerate(policies)}
    ids = sorted({u.address_id for u in coins})
    addresses = {a.id: a for start in range(0, len(ids), 500)
                 for a in session.scalars(select(Address).where(Address.id.in_(ids[start:start + 500])))}
    last_index = {p.id: session.scalar(select(func.max(Address.index)).where(Address.policy_id == p.id)) or 0
                  for p in policies}
    network = policies[0].network
    return {
        "format": proof_format.PACKAGE_FORMAT, "network": network, "kind": run.kind,
        "custodian": run.custodian, "audit": run.audit, "nonce": run.nonce, "message": run.message,
        "height": run.height, "block_hash": run.block_hash,
        "descriptors": [{"policy": p.name, "descriptor": spec_of(p).descriptor(), "threshold": p.threshold,
                         "keys": len(spec_of(p).keys), "range": [0, last_index[p.id]]} for p in policies],
        "coins": [{"outpoint": f"{u.txid}:{u.vout}", "amount": u.value, "descriptor": position[u.policy_id],
                   "branch": addresses[u.address_id].branch, "index": addresses[u.address_id].index,
                   "height": u.height, "coinbase": u.coinbase} for u in coins],
        "total": run.total,
        "txid": _txid(raw),
        "transaction": raw.hex(),
    }


def _txid(raw: bytes) -> str:
    return Transaction.parse(raw).txid().hex()


def bip127_psbt(run: ReserveRun) -> str:
    """A finalized run as a BIP-127 proof file: the run's PSBT with each coin input's final witness (and,
    as BIP-174's finalizer does, without the partial signatures and derivations it no longer needs)."""
    if run.package is None:
        raise CustodyError(f"run #{run.id} is {run.state}: a proof file is written once it is finalized")
    if run.kind != "bip127":
        raise CustodyError(f"run #{run.id} commits to its message in {run.kind} form; a BIP-127 file needs a run "
                           "created with --kind bip127")
    psbt = PSBT.from_string(run.psbt)
    signed = Transaction.parse(bytes.fromhex(json.loads(run.package)["transaction"]))
    for scope, vin in zip(psbt.inputs[1:], signed.vin[1:]):
        scope.final_scriptwitness = vin.witness
        scope.partial_sigs, scope.bip32_derivations, scope.witness_script = {}, {}, None
    return psbt.to_string()


def record_report(session: Session, run: ReserveRun, report: dict, *, actor: str) -> None:
    """Keep a run's signed verification report ({"report", "signature"}) for auditors to download."""
    run.report = json.dumps(report, indent=1)
    run.verdict = report["report"]["verdict"]
    record(session, "reserves.verified", actor, f"reserves:{run.id}",
           {"verdict": run.verdict, "report_sha256": hashlib.sha256(run.report.encode()).hexdigest()})


def schedule(session: Session, audit: str, *, every_days: int, policies: list[str] | None, actor: str,
             first_due: datetime | None = None) -> ReserveSchedule:
    """An officer asks for a re-proof every `every_days` days; the next run starts with the auditor's nonce."""
    if not 1 <= every_days <= 366:
        raise CustodyError("a re-proof is scheduled every 1 to 366 days")
    names = [p.name for p in _policies(session, policies)]
    due = first_due or datetime.now(timezone.utc) + timedelta(days=every_days)
    row = ReserveSchedule(audit=audit, policies=json.dumps(names), every_days=every_days, next_due=due,
                          created_by=actor)
    session.add(row)
    session.flush()
    record(session, "reserves.scheduled", actor, f"reserve-schedule:{row.id}",
           {"audit": audit, "every_days": every_days, "policies": names, "next_due": due.isoformat()})
    return row


def sign_reserves_on_device(session: Session, run: ReserveRun, device: SigningDevice, *, actor: str) -> list[str]:
    """Have the device sign a proof of reserves: it shows the message and signs every coin it can."""
    policies = [get_policy(session, name) for name in json.loads(run.policies)]
    signing.ready_to_sign(session, device, [p.id for p in policies])
    if run.state != "signing":
        raise CustodyError(f"run #{run.id} is {run.state}; it is not collecting signatures")
    signed = signing.sign_psbt(device, policies[0].network, run.psbt)
    signers = add_signatures(session, run, signed, actor=f"{actor} on device {device.serial}")
    if device.fingerprint not in signers:
        raise CustodyError(f"device {device.serial} returned no new signature")
    return signers
