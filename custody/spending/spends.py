"""The spend lifecycle: request (its unsigned transaction made, coins reserved) -> approvals -> signatures
-> broadcast -> confirmation.

Default deny: a policy without an approval rule cannot spend. A request becomes signable only once
enough distinct officers (never the requester) approved it, each with a signature by their own key over
its unsigned transaction (custody.people.credentials), it is within the per-request and rolling 24-hour limits,
every destination is on the allow-list, and any delay for large spends has passed. The approvals travel
in the PSBT, where the devices check them against their own policy.
"""
from __future__ import annotations

import json
import unicodedata
from datetime import datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation

from embit.networks import NETWORKS
from embit.script import address_to_scriptpubkey
from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from custody import faults
from custody.chain.node_client import NodeClient, RPCError
from custody.devices import inventory as devices
from custody.devices.models import Rotation
from custody.errors import CustodyError, NotFound
from custody.eventlog.log import record
from custody.ledger.coins import tip_height, utxo_state
from custody.ledger.models import Address, Policy, Utxo
from custody.people import credentials
from custody.people.models import User
from custody.people.roles import canonical_username
from custody.bitcoin.psbt_builder import (TX_OVERHEAD_VBYTES, BuildError, Coin, build_spend, input_vbytes, output_vbytes,
                           plan_spend)
from custody.bitcoin.signatures import finalize, merge_encoded, Merged, SignatureError
from custody.ledger.registry import spec_of
from custody.people.credential_models import ApproverCredential
from custody.spending.models import Approval, ApprovalRule, Spend, SpendSignature
from custody_signer import protocol as approvals_protocol
from embit.psbt import PSBT

FEE_RATE_FLOOR = 1.0        # sat/vB
FEE_RATE_CAP = 500.0        # sat/vB: a typo here costs real money
ACTIVE_STATES = ("requested", "approved", "signing", "signed", "broadcasting", "broadcast")


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _aware(moment: datetime | None) -> datetime | None:
    return moment if moment is None or moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def set_approval_rule(session: Session, policy: Policy, *, required_approvals: int, per_request_limit: int | None = None,
                      daily_limit: int | None = None, allow_list: list[str] | None = None,
                      delay_threshold: int | None = None, delay_seconds: int = 0,
                      actor: str = "coordinator") -> ApprovalRule:
    if required_approvals < 1:
        raise CustodyError("an approval rule needs at least one approving officer")
    for limit in (per_request_limit, daily_limit, delay_threshold):
        if limit is not None and (not isinstance(limit, int) or limit <= 0):
            raise CustodyError("limits are positive whole satoshis")
    if delay_seconds < 0:
        raise CustodyError("delay cannot be negative")
    for address in allow_list or []:
        _script(address, policy.network)
    rule = session.get(ApprovalRule, policy.id) or ApprovalRule(policy_id=policy.id)
    rule.required_approvals, rule.per_request_limit, rule.daily_limit = required_approvals, per_request_limit, daily_limit
    rule.allow_list = json.dumps(sorted(allow_list)) if allow_list is not None else None
    rule.delay_threshold, rule.delay_seconds = delay_threshold, delay_seconds
    session.add(rule)
    record(session, "approval_rule.set", actor, f"policy:{policy.name}",
           {"required_approvals": required_approvals, "per_request_limit": per_request_limit,
            "daily_limit": daily_limit, "allow_list": sorted(allow_list) if allow_list is not None else None,
            "delay_threshold": delay_threshold, "delay_seconds": delay_seconds})
    return rule


def _script(address: str, network: str) -> bytes:
    try:
        spk = address_to_scriptpubkey(address).data
    except Exception:
        raise CustodyError(f"{address!r} is not a valid address") from None
    hrp = NETWORKS[network]["bech32"]
    if address.lower().startswith(("bc1", "tb1", "bcrt1")) and not address.lower().startswith(hrp + "1"):
        raise CustodyError(f"{address} is not a {network} address")
    return spk


def parse_amount(text: str) -> int:
    """'0.5' or '0.5btc' in BTC, or '50000sat': exact, no floats."""
    t = text.strip().lower()
    try:
        if t.endswith("sat"):
            value = Decimal(t[:-3])
            sats = value
        else:
            sats = Decimal(t.removesuffix("btc")) * 100_000_000
    except InvalidOperation:
        raise CustodyError(f"{text!r} is not an amount") from None
    if sats != sats.to_integral_value() or sats <= 0:
        raise CustodyError(f"{text!r} is not a positive whole number of satoshis")
    return int(sats)


def satoshis(value) -> int | None:
    """An amount as the API and CLI give it: integer satoshis, a BTC string ("0.5") or "NNNsat"; None: none."""
    if value is None:
        return None
    if isinstance(value, bool) or isinstance(value, float):
        raise CustodyError("amounts are BTC strings or whole satoshis, never floating-point numbers")
    if isinstance(value, int):
        if value <= 0:
            raise CustodyError("amounts are positive whole satoshis")
        return value
    return parse_amount(str(value))


def request_spend(session: Session, policy: Policy, requester: str, destinations: list[tuple[str, int]], *,
                  fee_rate: float | None = None, client: NodeClient | None = None, memo: str | None = None,
                  coins: list[str] | None = None, sweep: bool = False, version: int = 0) -> Spend:
    """Record a request; with a node, its unsigned transaction is made at once (`prepare_psbt`), since
    officers approve that transaction and not a wish."""
    if policy.status not in ("active", "retiring"):
        raise CustodyError(f"policy {policy.name!r} is {policy.status}: only active policies spend")
    if not requester.strip():
        raise CustodyError("a spend request names its requester")
    if not destinations:
        raise CustodyError("a spend needs at least one destination")
    if sweep and len(destinations) != 1:
        raise CustodyError("a sweep has exactly one destination")
    for address, amount in destinations:
        _script(address, policy.network)
        if not isinstance(amount, int) or (amount <= 0 and not sweep):
            raise CustodyError("amounts are positive whole satoshis")
    if fee_rate is None:
        fee_rate = estimate_fee_rate(client)
    if not FEE_RATE_FLOOR <= fee_rate <= FEE_RATE_CAP:
        raise CustodyError(f"fee rate {fee_rate:g} sat/vB is outside {FEE_RATE_FLOOR:g}..{FEE_RATE_CAP:g}")
    if coins:
        for outpoint in coins:
            _spendable_coin(session, policy, outpoint)
    amount = sum(a for _, a in destinations)
    if sweep:
        amount = sum(_spendable_coin(session, policy, o).value for o in coins) if coins else _spendable_total(session, policy)
    spend = Spend(policy_id=policy.id, requester=requester.strip(), memo=memo,
                  destinations=json.dumps([{"address": a, "amount": v} for a, v in destinations]),
                  amount=amount, fee_rate_milli=int(round(fee_rate * 1000)), sweep=sweep,
                  coins=json.dumps(coins) if coins else None, state="requested")
    session.add(spend)
    session.flush()
    record(session, "spend.requested", spend.requester, f"spend:{spend.id}",
           {"policy": policy.name, "destinations": json.loads(spend.destinations), "amount": amount,
            "fee_rate_milli": spend.fee_rate_milli, "memo": memo, "sweep": sweep, "coins": coins or []})
    if client is not None:
        prepare_psbt(session, spend, client, version=version, actor=spend.requester)
    return spend


def estimate_fee_rate(client: NodeClient | None, target: int = 6) -> float:
    """The node's estimate for `target` blocks, kept between the floor and the cap."""
    if client is None:
        raise CustodyError("give a fee rate, or a node to estimate one")
    estimate = client.estimatesmartfee(target)
    if "feerate" not in estimate:
        return FEE_RATE_FLOOR
    rate = float(Decimal(str(estimate["feerate"])) * 100_000_000 / 1000)
    return min(max(rate, FEE_RATE_FLOOR), FEE_RATE_CAP)


def get_spend(session: Session, spend_id: int) -> Spend:
    spend = session.get(Spend, spend_id)
    if spend is None:
        raise NotFound(f"no spend #{spend_id}")
    return spend


def _identity(name: str) -> str:
    """A name as compared with an officer's canonical username (requesters may be system actors)."""
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", name).strip().casefold())


def decide(session: Session, spend: Spend, officer: str, approve: bool, proof: dict | None = None) -> Spend:
    """Record one officer's decision; the spend becomes approved once the rule is met. An approval is
    `proof`, the officer's signature over the spend's unsigned transaction (custody.people.credentials); a
    rejection needs none. With no delay to wait out, a fully approved spend goes to its signers at once."""
    officer = canonical_username(officer)         # "OLGA" and "olga" are one officer, whoever typed it
    if spend.state != "requested":
        raise CustodyError(f"spend #{spend.id} is {spend.state}; decisions are taken on requested spends")
    if officer == _identity(spend.requester):
        raise CustodyError("the requester cannot approve or reject their own spend")
    credential = approval = None
    if approve:
        if session.get(ApprovalRule, spend.policy_id) is None:
            raise CustodyError("this policy has no approval rule: no spend can be approved (default deny)")
        if spend.psbt is None:
            raise CustodyError(f"spend #{spend.id} has no transaction to approve yet: make it first "
                               f"(custody spend psbt {spend.id})")
        user = session.scalar(select(User).where(User.username == officer))
        if user is None:
            raise CustodyError(f"{officer} is not a user: approvals are made by officers' own keys")
        credential, approval = credentials.check_approval(session, user, approval_message(session, spend), proof)
    # Decisions on one policy's spends are taken one at a time: the rule row is locked (PostgreSQL;
    # SQLite's writer lock, taken by the insert below, does the same), so two final approvals cannot
    # each count the daily limit without the other.
    rule = session.scalar(select(ApprovalRule).where(ApprovalRule.policy_id == spend.policy_id).with_for_update())
    if session.scalar(select(Approval).where(Approval.spend_id == spend.id, Approval.officer == officer)):
        raise CustodyError(f"{officer} has already decided on spend #{spend.id}")
    spend_id = spend.id
    session.add(Approval(spend_id=spend_id, officer=officer, decision="approve" if approve else "reject",
                         credential_id=credential.id if credential else None,
                         proof=approval.value.hex() if approval else None))
    try:
        session.flush()
    except IntegrityError:    # the same decision sent twice at once: the other one won (the caller rolls back)
        raise CustodyError(f"{officer} has already decided on spend #{spend_id}") from None
    session.refresh(spend)    # read under the lock: another decision may have settled it meanwhile
    if spend.state != "requested":
        raise CustodyError(f"spend #{spend.id} is {spend.state}; decisions are taken on requested spends")
    record(session, "spend.approved" if approve else "spend.rejected", officer, f"spend:{spend.id}",
           {"credential": credential.id, "kind": credential.kind, "public_key": credential.public_key,
            "unsigned_txid": PSBT.from_string(spend.psbt).tx.txid().hex()} if approve else {})
    if not approve:
        spend.state = "rejected"
        _release(session, spend)
        return spend
    if rule is None:
        raise CustodyError("this policy has no approval rule: no spend can be approved (default deny)")
    approvals = session.scalar(select(func.count()).select_from(Approval).where(
        Approval.spend_id == spend.id, Approval.decision == "approve"))
    if approvals < rule.required_approvals:
        return spend
    _check_rule(session, spend, rule)
    spend.state = "approved"
    if rule.delay_threshold is not None and spend.amount >= rule.delay_threshold:
        spend.signable_after = _now() + timedelta(seconds=rule.delay_seconds)
        return spend
    return open_signing(session, spend, actor=officer)


def approval_message(session: Session, spend: Spend) -> bytes:
    """What each officer signs to approve `spend`: its policy, unsigned transaction, outputs and fee."""
    return credentials.approval_message(session, session.get(Policy, spend.policy_id), spend.psbt)


def approval_options(session: Session, spend: Spend, officer: str) -> dict:
    """What the console needs to ask an officer's passkey for an approval of `spend`."""
    if spend.state != "requested" or spend.psbt is None:
        raise CustodyError(f"spend #{spend.id} is {spend.state}; only a requested spend with its transaction "
                           "is approved")
    user = session.scalar(select(User).where(User.username == canonical_username(officer)))
    if user is None:
        raise NotFound(f"no user {officer!r}")
    message = approval_message(session, spend)
    return {"message": message.decode(), "options": credentials.assertion_options(session, user, message)}


def _check_rule(session: Session, spend: Spend, rule: ApprovalRule) -> None:
    if session.scalar(select(Rotation.id).where(Rotation.migration_spend_id == spend.id)) is not None:
        # a rotation's sweep to its successor: approvals and allow-list, no amount limits
        return _check_allow_list(spend, rule)
    if rule.per_request_limit is not None and spend.amount > rule.per_request_limit:
        raise CustodyError(f"spend of {spend.amount} sat exceeds the per-request limit of {rule.per_request_limit} sat")
    if rule.daily_limit is not None:
        total = _outflow_last_24h(session, spend) + spend.amount
        if total > rule.daily_limit:
            raise CustodyError(f"spend would bring the last 24 hours to {total} sat, over the daily limit of "
                               f"{rule.daily_limit} sat")
    _check_allow_list(spend, rule)


NOT_YET_SENT = ("approved", "signing", "signed")
SENT = ("broadcasting", "broadcast", "confirmed")


def _outflow_last_24h(session: Session, spend: Spend) -> int:
    """What the rolling daily limit counts besides `spend`: every approved spend not yet sent, however
    old (it can go out at any moment), and every spend approved or sent in the last 24 hours. When it
    was requested does not matter: a request that waited a day is money leaving today."""
    since = _now() - timedelta(hours=24)
    approved_at = (select(func.max(Approval.at)).where(Approval.spend_id == Spend.id, Approval.decision == "approve")
                   .correlate(Spend).scalar_subquery())
    return session.scalar(select(func.coalesce(func.sum(Spend.amount), 0)).where(
        Spend.policy_id == spend.policy_id, Spend.id != spend.id,
        or_(Spend.state.in_(NOT_YET_SENT),
            and_(Spend.state.in_(SENT), or_(Spend.broadcast_at >= since, approved_at >= since)))))


def _check_allow_list(spend: Spend, rule: ApprovalRule) -> None:
    if rule.allow_list is not None:
        allowed = set(json.loads(rule.allow_list))
        for d in json.loads(spend.destinations):
            if d["address"] not in allowed:
                raise CustodyError(f"destination {d['address']} is not on this policy's allow-list")


def _spendable_coin(session: Session, policy: Policy, outpoint: str) -> Utxo:
    txid, _, vout = outpoint.partition(":")
    utxo = session.scalar(select(Utxo).where(Utxo.txid == txid, Utxo.vout == int(vout or -1), Utxo.policy_id == policy.id)) \
        if vout.isdigit() else None
    if utxo is None:
        raise CustodyError(f"coin {outpoint} is not a coin of policy {policy.name!r}")
    state = utxo_state(utxo, tip_height(session))
    if state != "confirmed":
        raise CustodyError(f"coin {outpoint} is {state}: it cannot be spent")
    return utxo


def _spendable(session: Session, policy: Policy) -> list[Utxo]:
    tip = tip_height(session)
    return [u for u in session.scalars(select(Utxo).where(Utxo.policy_id == policy.id, Utxo.spent_txid.is_(None)))
            if utxo_state(u, tip) == "confirmed"]


def _spendable_total(session: Session, policy: Policy) -> int:
    return sum(u.value for u in _spendable(session, policy))


def _coins(session: Session, policy: Policy, outpoints: list[str] | None) -> list[Coin]:
    """The requester's chosen coins, or every spendable coin of the policy for coin selection."""
    chosen = [_spendable_coin(session, policy, o) for o in outpoints] if outpoints else _spendable(session, policy)
    coins = []
    for utxo in chosen:
        address = session.get(Address, utxo.address_id)
        coins.append(Coin(utxo.txid, utxo.vout, utxo.value, address.branch, address.index, address.script_pubkey))
    if not coins:
        raise CustodyError(f"policy {policy.name!r} has no spendable coins")
    return coins


def fee_preview(session: Session, policy: Policy, destinations: list[tuple[str, int]], *, fee_rate: float,
                coins: list[str] | None = None, sweep: bool = False) -> dict:
    """What a request would cost at `fee_rate` with today's coins: inputs, fee, change. Nothing is kept."""
    if not FEE_RATE_FLOOR <= fee_rate <= FEE_RATE_CAP:
        raise CustodyError(f"fee rate {fee_rate:g} sat/vB is outside {FEE_RATE_FLOOR:g}..{FEE_RATE_CAP:g}")
    if not destinations:
        raise CustodyError("a spend needs at least one destination")
    outputs = []
    for address, amount in destinations:
        if not isinstance(amount, int) or (amount <= 0 and not sweep):
            raise CustodyError("amounts are positive whole satoshis")
        outputs.append((_script(address, policy.network), amount))
    spec = spec_of(policy)
    try:
        chosen, outputs, fee, change = plan_spend(spec, _coins(session, policy, coins), outputs, fee_rate=fee_rate,
                                                  change_spk=None, select=not coins and not sweep, sweep=sweep)
    except (BuildError, ValueError) as e:
        raise CustodyError(str(e)) from None
    vsize = TX_OVERHEAD_VBYTES + input_vbytes(spec) * len(chosen) + sum(output_vbytes(spk) for spk, _ in outputs)
    if change:
        vsize += output_vbytes(b"\x00" * 34)
    return {"policy": policy.name, "fee_rate": fee_rate, "inputs": [c.outpoint for c in chosen],
            "input_total": sum(c.value for c in chosen), "amount": sum(v for _, v in outputs),
            "fee": fee, "change": change, "vsize": int(-(-vsize // 1))}


RESERVE_ATTEMPTS = 5     # coin selection runs again when another spend took a chosen coin meanwhile


def prepare_psbt(session: Session, spend: Spend, client: NodeClient, *, version: int = 0,
                 actor: str = "coordinator") -> Spend:
    """Make the unsigned transaction officers will approve, and reserve its coins.

    Two spends asking at once must not get one coin: each coin is reserved by a conditional update
    (only while nobody holds it) whose row count is checked, and the spend's PSBT is set the same way.
    When a chosen coin was taken meanwhile, what this attempt reserved is given back and selection runs
    again on what is left, so a refusal means the free coins do not suffice."""
    if spend.psbt is not None:
        return spend
    if spend.state not in ("requested", "approved"):
        raise CustodyError(f"spend #{spend.id} is {spend.state}; a transaction is made for a waiting request only")
    previous: dict[str, bytes] = {}
    for _ in range(RESERVE_ATTEMPTS):
        built = _build_psbt(session, spend, client, version, previous)
        if _reserve(session, spend, built.coins):
            break
        session.flush()
        session.expire_all()      # read the coins again: another spend's reservation has landed
    else:
        raise CustodyError(f"other spends kept taking the coins chosen for spend #{spend.id}; ask again")
    claimed = session.execute(update(Spend).where(Spend.id == spend.id, Spend.state == spend.state,
                                                  Spend.psbt.is_(None))
                              .values(psbt=built.psbt.to_string(), fee=built.fee,
                                      change_index=built.change_index)).rowcount
    if not claimed:
        raise CustodyError(f"spend #{spend.id} changed while its PSBT was made; look at it again")
    session.refresh(spend)
    _record_psbt(session, spend, "psbt.created", built, actor)
    return spend


def open_signing(session: Session, spend: Spend, *, actor: str = "coordinator") -> Spend:
    """Hand an approved spend to its signers once any delay has passed: the officers' approvals are put
    in its PSBT (BIP-174 proprietary fields), where the devices verify them. Re-running is harmless."""
    if spend.state in ("signing", "signed") and spend.psbt is not None:
        return spend
    if spend.state != "approved" or spend.psbt is None:
        raise CustodyError(f"spend #{spend.id} is {spend.state}; only an approved spend goes to its signers")
    if spend.signable_after is not None and _now() < _aware(spend.signable_after):
        raise CustodyError(f"spend #{spend.id} is a large spend: signable after {spend.signable_after:%Y-%m-%d %H:%M} UTC")
    psbt = PSBT.from_string(spend.psbt)
    rows = session.execute(select(Approval, ApproverCredential).join(ApproverCredential).where(
        Approval.spend_id == spend.id, Approval.decision == "approve")).all()
    for approval, credential in rows:
        key, value = approvals_protocol.psbt_field(approvals_protocol.Approval(
            credential.kind, bytes.fromhex(credential.public_key), bytes.fromhex(approval.proof)))
        psbt.unknown[key] = value
    opened = session.execute(update(Spend).where(Spend.id == spend.id, Spend.state == "approved",
                                                 Spend.psbt == spend.psbt)
                             .values(psbt=psbt.to_string(), state="signing")).rowcount
    session.refresh(spend)
    if not opened:
        raise CustodyError(f"spend #{spend.id} changed meanwhile; look at it again")
    record(session, "spend.signing", actor, f"spend:{spend.id}",
           {"approvals": sorted(a.officer for a, _ in rows), "unsigned_txid": psbt.tx.txid().hex()})
    return spend


def _build_psbt(session: Session, spend: Spend, client: NodeClient, version: int, previous: dict[str, bytes]):
    """Select coins among those free now and build the unsigned transaction (nothing is reserved)."""
    policy = session.get(Policy, spend.policy_id)
    spec = spec_of(policy)
    coins = _coins(session, policy, json.loads(spend.coins) if spend.coins else None)
    change = session.scalars(select(Address).where(Address.policy_id == policy.id, Address.branch == 1,
                                                   Address.used.is_(False)).order_by(Address.index)).first()
    reserved_change = {s.change_index for s in session.scalars(select(Spend).where(
        Spend.policy_id == policy.id, Spend.state.in_(("requested", "approved", "signing", "signed")),
        Spend.change_index.is_not(None)))}
    while change is not None and change.index in reserved_change:
        change = session.scalars(select(Address).where(Address.policy_id == policy.id, Address.branch == 1,
                                                       Address.used.is_(False), Address.index > change.index)
                                 .order_by(Address.index)).first()
    for coin in coins:
        if coin.txid not in previous:
            previous[coin.txid] = bytes.fromhex(client.getrawtransaction(coin.txid))
    outputs = [(_script(d["address"], policy.network), d["amount"]) for d in json.loads(spend.destinations)]
    try:
        return build_spend(spec, coins, outputs, fee_rate=spend.fee_rate_milli / 1000,
                           change=(change.index, change.script_pubkey) if change else None, previous_txs=previous,
                           locktime=client.getblockcount(), select=not spend.coins and not spend.sweep,
                           sweep=spend.sweep, version=version)
    except (BuildError, ValueError) as e:
        raise CustodyError(str(e)) from None


def _reserve(session: Session, spend: Spend, coins: list[Coin]) -> bool:
    """Reserve every coin for `spend`, or none: True when all were still free. Coins are taken in
    outpoint order so that two spends never wait on each other's rows (PostgreSQL row locks)."""
    tag, taken = f"spend:{spend.id}", []
    for coin in sorted(coins, key=lambda c: (c.txid, c.vout)):
        won = session.execute(update(Utxo).where(Utxo.txid == coin.txid, Utxo.vout == coin.vout,
                                                 Utxo.reserved_by.is_(None), Utxo.spent_txid.is_(None),
                                                 Utxo.frozen.is_(False))
                              .values(reserved_by=tag)).rowcount
        if not won:
            for txid, vout in taken:
                session.execute(update(Utxo).where(Utxo.txid == txid, Utxo.vout == vout, Utxo.reserved_by == tag)
                                .values(reserved_by=None))
            return False
        taken.append((coin.txid, coin.vout))
    return True


def _record_psbt(session: Session, spend: Spend, kind: str, built, actor: str = "coordinator") -> None:
    import hashlib
    record(session, kind, actor, f"spend:{spend.id}",
           {"unsigned_txid": built.psbt.tx.txid().hex(), "inputs": [c.outpoint for c in built.coins],
            "fee": built.fee, "change": built.change, "psbt_sha256": hashlib.sha256(built.psbt.serialize()).hexdigest()})


def add_signatures(session: Session, spend: Spend, upload: bytes | str, *, actor: str | None = None) -> list[str]:
    """Verify and merge an uploaded signed PSBT; returns the fingerprints that newly signed."""
    stored, threshold = signing_input(session, spend)
    return store_signatures(session, spend, merge_signatures(stored, upload, threshold), based_on=stored, actor=actor)


class SignaturesChanged(CustodyError):
    """The spend's PSBT changed between reading it and storing a merge made from it."""


def signing_input(session: Session, spend: Spend) -> tuple[str, int]:
    """What merging an upload needs (the stored PSBT, the policy's threshold), for a spend collecting signatures."""
    if spend.state not in ("signing", "signed"):
        raise CustodyError(f"spend #{spend.id} is {spend.state}; it is not collecting signatures")
    return spend.psbt, session.get(Policy, spend.policy_id).threshold


def merge_signatures(stored: str, upload: bytes | str, threshold: int) -> Merged:
    """The CPU-heavy half of add_signatures, without the database: the web service runs it in a worker
    process (coordinator/cpu_pool.py) and stores the result with store_signatures."""
    try:
        return merge_encoded(stored, upload, threshold)
    except SignatureError as e:
        raise CustodyError(str(e)) from None


def store_signatures(session: Session, spend: Spend, merged: Merged, *, based_on: str,
                     actor: str | None = None) -> list[str]:
    """Store a merge made from the PSBT `based_on`. One writer wins: when another upload was stored
    after `based_on` was read, nothing is written and SignaturesChanged is raised (merge again)."""
    if not merged.new_signatures:
        return []
    held_by = devices.attribute_signers(session, merged.signers, [spend.policy_id])   # refuses a barred device
    state = "signed" if merged.complete else spend.state
    stored = session.execute(update(Spend).where(Spend.id == spend.id, Spend.psbt == based_on,
                                                 Spend.state.in_(("signing", "signed")))
                             .values(psbt=merged.psbt, state=state)).rowcount
    if not stored:
        raise SignaturesChanged(f"spend #{spend.id} changed while this upload was verified (another signature "
                                "arrived, or its state moved on): nothing was stored")
    for fingerprint, count in merged.fingerprints.items():
        row = session.scalar(select(SpendSignature).where(SpendSignature.spend_id == spend.id,
                                                          SpendSignature.fingerprint == fingerprint))
        if row is None:
            session.add(SpendSignature(spend_id=spend.id, fingerprint=fingerprint, inputs_signed=count))
        else:
            row.inputs_signed = count
    record(session, "psbt.signed", actor or ",".join(merged.signers), f"spend:{spend.id}",
           {"signatures": merged.new_signatures, "signers": merged.signers, "devices": held_by,
            "complete": state == "signed"})
    return merged.signers


ALREADY_SENT = ("txn-already-in-mempool", "txn-already-known")   # the node has it: counts as broadcast
RPC_VERIFY_ALREADY_IN_CHAIN = -27


def broadcast(sessions, spend_id: int, client: NodeClient, *, actor: str = "coordinator") -> str:
    """Broadcast a fully signed spend, recorded before it is made: the txid and the state
    'broadcasting' are committed in one transaction, the transaction is sent after it, and 'broadcast'
    is committed in a second one. A crash between the two leaves a spend `track` finds on the node or
    sends again (the same transaction: it can pay only once). Re-running is harmless: a spend already
    broadcasting is sent again, one already broadcast is left as it is. `sessions` is a sessionmaker."""
    with sessions.begin() as s:
        raw = begin_broadcast(s, get_spend(s, spend_id), client, actor=actor)
    faults.point("broadcast.committed")
    with sessions.begin() as s:
        spend = get_spend(s, spend_id)
        if raw is not None:
            send(s, spend, client, raw, actor=actor)
        return spend.txid


def begin_broadcast(session: Session, spend: Spend, client: NodeClient, *, actor: str) -> bytes | None:
    """Check the signed transaction with the node and mark the spend 'broadcasting' with its txid.
    Returns the raw transaction to send, or None when the spend is past broadcasting."""
    if spend.state in ("broadcast", "confirmed") and spend.txid:
        return None
    if spend.state not in ("signed", "broadcasting"):
        raise CustodyError(f"spend #{spend.id} is {spend.state}; only fully signed spends are broadcast")
    policy = session.get(Policy, spend.policy_id)
    raw = finalize(PSBT.from_string(spend.psbt), policy.threshold)
    if spend.state == "broadcasting":
        return raw
    verdict = client.testmempoolaccept([raw.hex()])[0]
    if not verdict["allowed"] and verdict.get("reject-reason") not in ALREADY_SENT:
        raise CustodyError(f"the node refuses the transaction: {verdict.get('reject-reason')}")
    txid = verdict["txid"]
    # One writer wins: a conditional update whose row count is checked (two broadcasts at once).
    claimed = session.execute(update(Spend).where(Spend.id == spend.id, Spend.state == "signed")
                              .values(state="broadcasting", txid=txid, broadcast_at=_now())).rowcount
    session.refresh(spend)
    if claimed:
        record(session, "spend.broadcasting", actor, f"spend:{spend.id}", {"txid": txid, "fee": spend.fee})
    return raw


def send(session: Session, spend: Spend, client: NodeClient, raw: bytes, *, actor: str) -> None:
    """Send a 'broadcasting' spend's transaction; a node that already has it counts as sent. A refusal
    leaves the spend 'broadcasting' for `track` to resolve against the chain."""
    try:
        client.sendrawtransaction(raw.hex())
        faults.point("broadcast.sent")
    except RPCError as e:
        if e.code != RPC_VERIFY_ALREADY_IN_CHAIN and e.message not in ALREADY_SENT:
            raise CustodyError(f"broadcast failed: {e.message}; spend #{spend.id} stays broadcasting "
                               f"(transaction {spend.txid}) until its coins are seen spent") from None
    if spend.state == "broadcasting":
        _set_state(session, spend, "broadcast", "spend.broadcast", actor=actor, fee=spend.fee)


REORG_WINDOW = 100     # blocks: a confirmed spend is followed this deep, in case a reorganisation undoes it


def track(session: Session, spend: Spend, client: NodeClient, confirmations: int = 1) -> Spend:
    """Follow a spend to the chain and back. Broadcasting or broadcast: confirmed once `confirmations`
    deep. Confirmed: back to broadcast if its transaction left the best chain. Not in the mempool nor on
    the best chain: sent again (its coins stay reserved) unless the ledger shows one of its coins spent
    by another transaction in a block of the best chain, which makes it conflicted. Every change is
    logged."""
    if spend.state not in ("broadcasting", "broadcast", "confirmed") or not spend.txid:
        return spend
    try:
        info = client.getrawtransaction(spend.txid, True)
    except RPCError as e:
        if e.code != -5:      # only "no such transaction" means the node does not have it
            raise
        info = None
    depth = info.get("confirmations", 0) if info else 0
    if info is None or (depth == 0 and "blockhash" in info):      # neither in the mempool nor on the chain
        return _off_chain(session, spend, client)
    if spend.state == "broadcasting":
        _set_state(session, spend, "broadcast", "spend.broadcast", found_on_node=True)
    if depth >= confirmations:
        height = client.getblockcount() - depth + 1
        if spend.state != "confirmed":
            spend.confirmed_height = height
            # its coins stay reserved to it: a reorganisation may hand them back to the ledger unspent,
            # and until this spend is seen conflicted no other spend may take them
            _set_state(session, spend, "confirmed", "spend.confirmed", height=height, confirmations=depth)
        elif height != spend.confirmed_height:              # reorganised into another block
            spend.confirmed_height = height
            record(session, "spend.reconfirmed", "coordinator", f"spend:{spend.id}",
                   {"txid": spend.txid, "height": height})
    elif spend.state == "confirmed" and depth == 0:          # back in the mempool after a reorganisation
        _unconfirm(session, spend, in_mempool=True)
    return spend


def _off_chain(session: Session, spend: Spend, client: NodeClient) -> Spend:
    psbt = PSBT.from_string(spend.psbt)
    outpoints = [(i.txid.hex(), i.vout) for i in psbt.tx.vin]
    coins = [session.scalar(select(Utxo).where(Utxo.txid == t, Utxo.vout == n)) for t, n in outpoints]
    others = sorted({(c.spent_txid, c.txid, c.vout) for c in coins if c is not None and c.spent_txid
                     and c.spent_txid != spend.txid and c.spent_height is not None})
    if others:
        spender, txid, vout = others[0]
        spend.confirmed_height = None
        _release(session, spend)
        _set_state(session, spend, "conflicted", "spend.conflicted", spent_by=spender, coin=f"{txid}:{vout}")
        return spend
    ours = [c.spent_height for c in coins if c is not None and c.spent_txid == spend.txid and c.spent_height]
    if ours and len(ours) == len(coins):     # the ledger saw it confirmed; this node keeps no index of it
        if spend.state != "confirmed":
            spend.confirmed_height = min(ours)
            _set_state(session, spend, "confirmed", "spend.confirmed", height=min(ours))
        return spend
    if spend.state == "confirmed":
        _unconfirm(session, spend, in_mempool=False)
    raw = finalize(psbt, session.get(Policy, spend.policy_id).threshold)
    try:
        client.sendrawtransaction(raw.hex())
    except RPCError as e:
        if e.code != RPC_VERIFY_ALREADY_IN_CHAIN and e.message not in ALREADY_SENT:
            return spend                # refused for now (e.g. a conflict still in the mempool): next round
    record(session, "spend.rebroadcast", "coordinator", f"spend:{spend.id}", {"txid": spend.txid})
    if spend.state == "broadcasting":
        _set_state(session, spend, "broadcast", "spend.broadcast")
    return spend


def _unconfirm(session: Session, spend: Spend, *, in_mempool: bool) -> None:
    """A reorganisation took the spend's block away: its coins are reserved for it again."""
    former = spend.confirmed_height
    spend.confirmed_height = None
    for outpoint in PSBT.from_string(spend.psbt).tx.vin:
        coin = session.scalar(select(Utxo).where(Utxo.txid == outpoint.txid.hex(), Utxo.vout == outpoint.vout))
        if coin is not None and coin.reserved_by is None:
            coin.reserved_by = f"spend:{spend.id}"
    _set_state(session, spend, "broadcast", "spend.unconfirmed", former_height=former, in_mempool=in_mempool)


def _set_state(session: Session, spend: Spend, state: str, event: str, *, actor: str = "coordinator",
               **details) -> bool:
    """Move the spend on from the state this transaction read, and log it; when another transaction
    (a second broadcast, the leader's tracking) moved it first, change nothing and log nothing, so
    every transition is in the log exactly once."""
    moved = session.execute(update(Spend).where(Spend.id == spend.id, Spend.state == spend.state)
                            .values(state=state)).rowcount
    session.refresh(spend)
    if moved:
        record(session, event, actor, f"spend:{spend.id}", {"txid": spend.txid, **details})
    return bool(moved)


def bump_fee(session: Session, spend: Spend, client: NodeClient, fee_rate: float, *, cancel: bool = False,
             actor: str = "coordinator") -> Spend:
    """Replace an unconfirmed broadcast (BIP-125 / full RBF): the same coins at a higher fee rate,
    paying the same destinations, or with `cancel` everything back to the policy's own change address.
    The replacement is another transaction: officers approve it again and signatures are collected
    again (the devices would refuse approvals of the one it replaces)."""
    if spend.state != "broadcast":
        raise CustodyError(f"spend #{spend.id} is {spend.state}; only an unconfirmed broadcast can be replaced")
    info = client.getrawtransaction(spend.txid, True)
    if info.get("confirmations", 0) > 0:
        raise CustodyError(f"spend #{spend.id} is already confirmed")
    old_rate = spend.fee_rate_milli / 1000
    if not old_rate < fee_rate <= FEE_RATE_CAP:
        raise CustodyError(f"the new fee rate must be above {old_rate:g} and at most {FEE_RATE_CAP:g} sat/vB")
    policy = session.get(Policy, spend.policy_id)
    spec = spec_of(policy)
    old = PSBT.from_string(spend.psbt)
    coins, previous = [], {}
    for scope in old.inputs:
        txid, vout = scope.txid.hex(), scope.vout
        utxo = session.scalar(select(Utxo).where(Utxo.txid == txid, Utxo.vout == vout))
        address = session.get(Address, utxo.address_id)
        coins.append(Coin(txid, vout, utxo.value, address.branch, address.index, address.script_pubkey))
        previous[txid] = scope.non_witness_utxo.serialize()
    change = session.scalars(select(Address).where(Address.policy_id == policy.id, Address.branch == 1,
                                                   Address.used.is_(False)).order_by(Address.index)).first()
    if change is None and cancel:
        raise CustodyError("no unused change address to cancel to")
    if spend.change_index is not None and not cancel:
        change = session.scalar(select(Address).where(Address.policy_id == policy.id, Address.branch == 1,
                                                      Address.index == spend.change_index))
    destinations = [] if cancel else [(_script(d["address"], policy.network), d["amount"])
                                      for d in json.loads(spend.destinations)]
    try:
        built = build_spend(spec, coins, destinations or [(change.script_pubkey, 1)], fee_rate=fee_rate,
                            change=(change.index, change.script_pubkey) if change and not cancel else None,
                            previous_txs=previous, locktime=client.getblockcount(), select=False,
                            sweep=cancel)
    except (BuildError, ValueError) as e:
        raise CustodyError(str(e)) from None
    if built.fee <= spend.fee:
        raise CustodyError("the replacement must pay a higher absolute fee")
    spend.replaced_txids = json.dumps(json.loads(spend.replaced_txids or "[]") + [spend.txid])
    spend.psbt, spend.fee, spend.fee_rate_milli = built.psbt.to_string(), built.fee, int(round(fee_rate * 1000))
    spend.change_index = built.change_index if not cancel else None
    spend.txid, spend.state, spend.signable_after = None, "requested", None
    if cancel:
        spend.memo = f"{spend.memo or ''} [cancelled: coins returned to the policy]".strip()
        spend.destinations = json.dumps([{"address": change.address, "amount": built.psbt.tx.vout[0].value}])
    session.execute(SpendSignature.__table__.delete().where(SpendSignature.spend_id == spend.id))
    session.execute(Approval.__table__.delete().where(Approval.spend_id == spend.id))   # in the log still
    _record_psbt(session, spend, "spend.cancel_by_replacement" if cancel else "spend.fee_bumped", built, actor)
    return spend


def cpfp(session: Session, spend: Spend, client: NodeClient, fee_rate: float, requester: str) -> Spend:
    """Child pays for parent: a new spend of the stuck spend's own change back to the policy, paying
    enough that parent and child together reach `fee_rate`. The money never leaves custody, so it
    needs signatures but no approvals."""
    if spend.state != "broadcast" or spend.change_index is None:
        raise CustodyError(f"spend #{spend.id} has no unconfirmed change to spend (state {spend.state})")
    if not FEE_RATE_FLOOR <= fee_rate <= FEE_RATE_CAP:
        raise CustodyError(f"fee rate {fee_rate:g} sat/vB is outside {FEE_RATE_FLOOR:g}..{FEE_RATE_CAP:g}")
    try:
        parent = client.getmempoolentry(spend.txid)
    except RPCError:
        raise CustodyError(f"spend #{spend.id} is not in the node's mempool (confirmed or replaced)") from None
    policy = session.get(Policy, spend.policy_id)
    spec = spec_of(policy)
    change = session.scalar(select(Address).where(Address.policy_id == policy.id, Address.branch == 1,
                                                  Address.index == spend.change_index))
    raw = bytes.fromhex(client.getrawtransaction(spend.txid))
    parent_tx = PSBT.from_string(spend.psbt).tx
    vout = next(n for n, o in enumerate(parent_tx.vout) if o.script_pubkey.data == change.script_pubkey)
    value = parent_tx.vout[vout].value
    target = session.scalars(select(Address).where(Address.policy_id == policy.id, Address.branch == 1,
                                                   Address.used.is_(False), Address.index != change.index)
                             .order_by(Address.index)).first()
    child_vsize = TX_OVERHEAD_VBYTES + input_vbytes(spec) + output_vbytes(target.script_pubkey)
    parent_fee = int(Decimal(str(parent["fees"]["base"])) * 100_000_000)
    fee = int(-(-(fee_rate * (parent["vsize"] + child_vsize)) // 1)) - parent_fee
    if fee < child_vsize * FEE_RATE_FLOOR:
        raise CustodyError(f"the parent already pays {fee_rate:g} sat/vB; no child is needed")
    try:
        built = build_spend(spec, [Coin(spend.txid, vout, value, 1, change.index, change.script_pubkey)],
                            [(target.script_pubkey, 1)], fee_rate=fee / child_vsize, change=None,
                            previous_txs={spend.txid: raw}, locktime=client.getblockcount(), select=False, sweep=True)
    except (BuildError, ValueError) as e:
        raise CustodyError(str(e)) from None
    child = Spend(policy_id=policy.id, requester=requester, memo=f"CPFP for spend #{spend.id}",
                  destinations=json.dumps([{"address": target.address, "amount": built.psbt.tx.vout[0].value}]),
                  amount=0, fee_rate_milli=int(round(fee_rate * 1000)), sweep=True, psbt=built.psbt.to_string(),
                  fee=built.fee, state="signing")
    session.add(child)
    session.flush()
    record(session, "spend.cpfp", requester, f"spend:{child.id}", {"parent": f"spend:{spend.id}",
                                                                 "parent_txid": spend.txid, "fee": built.fee})
    return child


def _release(session: Session, spend: Spend) -> None:
    for utxo in session.scalars(select(Utxo).where(Utxo.reserved_by == f"spend:{spend.id}")):
        utxo.reserved_by = None


def cancel(session: Session, spend: Spend, *, actor: str = "coordinator") -> Spend:
    cancellable = ("requested", "approved", "signing", "signed")
    if spend.state not in cancellable:
        raise CustodyError(f"spend #{spend.id} is {spend.state}; it can no longer be cancelled here")
    # conditional, like every move out of 'signed': a broadcast that won meanwhile is not cancelled
    if not session.execute(update(Spend).where(Spend.id == spend.id, Spend.state.in_(cancellable))
                           .values(state="cancelled")).rowcount:
        session.refresh(spend)
        raise CustodyError(f"spend #{spend.id} is {spend.state}; it can no longer be cancelled here")
    session.refresh(spend)
    _release(session, spend)
    record(session, "spend.cancelled", actor, f"spend:{spend.id}", {})
    return spend


def summary(session: Session, spend: Spend) -> dict:
    approvals = session.scalars(select(Approval).where(Approval.spend_id == spend.id).order_by(Approval.at)).all()
    signatures = session.scalars(select(SpendSignature).where(SpendSignature.spend_id == spend.id)).all()
    return {"id": spend.id, "policy": session.get(Policy, spend.policy_id).name, "state": spend.state,
            "requester": spend.requester, "memo": spend.memo, "destinations": json.loads(spend.destinations),
            "amount": spend.amount, "fee_rate": spend.fee_rate_milli / 1000, "fee": spend.fee, "txid": spend.txid,
            "replaced_txids": json.loads(spend.replaced_txids or "[]"),
            "approvals": [{"officer": a.officer, "decision": a.decision, "at": a.at.isoformat()} for a in approvals],
            "signed_by": sorted(s.fingerprint for s in signatures),
            "signable_after": spend.signable_after.isoformat() if spend.signable_after else None}
