"""What the custodian holds: coin states, balances and their history, freezing, and BIP-329 labels."""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

from sqlalchemy import and_, case, cast, false, func, literal_column, not_, or_, select, String, true
from sqlalchemy.orm import Session

from custody.errors import CustodyError, NotFound
from custody.eventlog.log import record
from custody.json_depth import check_json_depth
from custody.ledger.models import Address, Block, ChainTransaction, Label, Policy, PolicyTransaction, Utxo

COINBASE_MATURITY = 100
STATES = ("unconfirmed", "confirmed", "immature", "frozen", "reserved", "spent")
LABEL_TYPES = ("tx", "addr", "pubkey", "input", "output", "xpub")
MAX_LABEL_LINE = 100_000      # characters of one BIP-329 record


def tip_height(session: Session) -> int | None:
    return session.scalar(select(func.max(Block.height)))


def utxo_state(utxo, tip: int | None) -> str:
    """`utxo`: a Utxo, or any row with its spent_txid, frozen, reserved_by, height and coinbase."""
    if utxo.spent_txid is not None:
        return "spent"
    if utxo.frozen:
        return "frozen"
    if utxo.reserved_by is not None:
        return "reserved"
    if utxo.height is None:
        return "unconfirmed"
    if utxo.coinbase and (tip is None or tip - utxo.height + 1 < COINBASE_MATURITY):
        return "immature"
    return "confirmed"


@dataclass
class Balance:
    policy: str
    confirmed: int = 0
    unconfirmed: int = 0
    immature: int = 0
    frozen: int = 0
    reserved: int = 0

    @property
    def total(self) -> int:
        return self.confirmed + self.unconfirmed + self.immature + self.frozen + self.reserved

    def to_json(self) -> dict:
        return {**asdict(self), "total": self.total}


def balances(session: Session, policy: Policy | None = None) -> list[Balance]:
    """Sums per policy and coin state, added up by the database (a ledger may hold 100,000 coins)."""
    tip = tip_height(session)
    state = case(*((_state_condition(st, tip), st) for st in ("frozen", "reserved", "unconfirmed", "immature")),
                 else_="confirmed")
    query = select(Policy).order_by(Policy.id) if policy is None else select(Policy).where(Policy.id == policy.id)
    policies = list(session.scalars(query))
    sums = select(Utxo.policy_id, state, func.sum(Utxo.value)).where(Utxo.spent_txid.is_(None))
    if policy is not None:
        sums = sums.where(Utxo.policy_id == policy.id)
    found: dict[int, Balance] = {p.id: Balance(p.name) for p in policies}
    for policy_id, coin_state, total in session.execute(sums.group_by(Utxo.policy_id, state)):
        if policy_id in found:
            setattr(found[policy_id], coin_state, getattr(found[policy_id], coin_state) + int(total))
    return [found[p.id] for p in policies]


def list_utxos(session: Session, policy: Policy, *, states: tuple[str, ...] | None = None,
               include_spent: bool = False) -> list[dict]:
    tip = tip_height(session)
    query = select(Utxo, Address).join(Address, Utxo.address_id == Address.id).where(Utxo.policy_id == policy.id)
    if not include_spent:
        query = query.where(Utxo.spent_txid.is_(None))
    labels = {(l.type, l.ref): l.label for l in session.scalars(select(Label).where(Label.type.in_(("output", "addr"))))}
    rows = []
    for utxo, address in session.execute(query.order_by(Utxo.height.is_(None), Utxo.height, Utxo.txid, Utxo.vout)):
        state = utxo_state(utxo, tip)
        if states and state not in states:
            continue
        outpoint = f"{utxo.txid}:{utxo.vout}"
        rows.append({"outpoint": outpoint, "value": utxo.value, "state": state, "height": utxo.height,
                     "confirmations": tip - utxo.height + 1 if utxo.height is not None and tip is not None else 0,
                     "address": address.address, "branch": address.branch, "index": address.index,
                     "coinbase": utxo.coinbase, "freeze_reason": utxo.freeze_reason,
                     "label": labels.get(("output", outpoint)) or labels.get(("addr", address.address))})
    return rows


SORTS = ("height", "value", "outpoint")


def _state_condition(state: str, tip: int | None):
    """SQL for `utxo_state(...) == state`, so filtering and counting happen in the database."""
    live = and_(Utxo.spent_txid.is_(None), Utxo.frozen == false(), Utxo.reserved_by.is_(None))
    young = Utxo.height > (tip if tip is not None else 0) - COINBASE_MATURITY + 1
    return {"spent": Utxo.spent_txid.is_not(None),
            "frozen": and_(Utxo.frozen == true(), Utxo.spent_txid.is_(None)),
            "reserved": and_(Utxo.reserved_by.is_not(None), Utxo.spent_txid.is_(None), Utxo.frozen == false()),
            "unconfirmed": and_(live, Utxo.height.is_(None)),
            "immature": and_(Utxo.coinbase == true(), live, Utxo.height.is_not(None), young),
            "confirmed": and_(live, Utxo.height.is_not(None), or_(Utxo.coinbase == false(), not_(young)))}[state]


# Unconfirmed coins sort as the newest. The same expression is indexed (migration 0004), partial
# indexes over unspent coins cover each sort, so a page deep into 100,000 coins stays fast.
HEIGHT_KEY = func.coalesce(Utxo.height, literal_column("2147483647"))
_ORDER = {"height": (HEIGHT_KEY, Utxo.id), "value": (Utxo.value, Utxo.id), "outpoint": (Utxo.txid, Utxo.vout)}


def utxo_page(session: Session, *, policy: Policy | None = None, states: list[str] | tuple[str, ...] | None = None,
              search: str | None = None, sort: str = "height", descending: bool = False, offset: int = 0,
              limit: int = 50, known_total: int | None = None, search_labels: bool = True) -> dict:
    """One page of coins, filtered and sorted by the database: {"total", "rows"}. Without `states`,
    every unspent coin. `search` matches an outpoint or address prefix, or a label (unless
    `search_labels` is false: for a caller who may not read labels). A caller that already knows the
    total for these filters passes it as `known_total` to skip counting."""
    if sort not in SORTS:
        raise CustodyError(f"sort by one of {', '.join(SORTS)}, not {sort!r}")
    if not 1 <= limit <= 1000 or offset < 0:
        raise CustodyError("limit is 1..1000 and offset at least 0")
    for state in states or ():
        if state not in STATES:
            raise CustodyError(f"state must be one of {', '.join(STATES)}, not {state!r}")
    tip = tip_height(session)
    conditions = []
    if policy is not None:
        conditions.append(Utxo.policy_id == policy.id)
    conditions.append(or_(*(_state_condition(st, tip) for st in states)) if states else Utxo.spent_txid.is_(None))
    if search and search.strip():
        conditions.append(_search_condition(session, search.strip(), labels=search_labels))
    ids = select(Utxo.id).where(*conditions)
    total = known_total if known_total is not None else session.scalar(select(func.count()).select_from(ids.subquery()))
    order = [c.desc() for c in _ORDER[sort]] if descending else list(_ORDER[sort])
    page = session.scalars(ids.order_by(*order).offset(offset).limit(limit)).all()
    # plain rows (no ORM objects): this runs for every page a console or a script asks for
    found = {row.id: row for row in session.execute(
        select(Utxo.id, Utxo.txid, Utxo.vout, Utxo.value, Utxo.height, Utxo.coinbase, Utxo.spent_txid, Utxo.frozen,
               Utxo.freeze_reason, Utxo.reserved_by, Address.address, Address.branch, Address.index,
               Policy.name.label("policy"))
        .join(Address, Utxo.address_id == Address.id).join(Policy, Policy.id == Utxo.policy_id)
        .where(Utxo.id.in_(page)))} if page else {}
    rows = [found[i] for i in page]
    labels = {}
    if rows:
        refs = [f"{r.txid}:{r.vout}" for r in rows] + [r.address for r in rows]
        labels = dict(((t, ref), text) for t, ref, text in session.execute(
            select(Label.type, Label.ref, Label.label).where(Label.type.in_(("output", "addr")), Label.ref.in_(refs))))
    out = []
    for r in rows:
        outpoint = f"{r.txid}:{r.vout}"
        out.append({"outpoint": outpoint, "policy": r.policy, "value": r.value, "state": utxo_state(r, tip),
                    "height": r.height, "confirmations": tip - r.height + 1 if r.height is not None and tip is not None else 0,
                    "address": r.address, "branch": r.branch, "index": r.index, "coinbase": r.coinbase,
                    "freeze_reason": r.freeze_reason,
                    "label": labels.get(("output", outpoint)) or labels.get(("addr", r.address))})
    return {"total": total, "offset": offset, "limit": limit, "rows": out}


def _prefix(column, text: str):
    """column starts with text, as a range both databases answer from an index."""
    return and_(column >= text, column < text + "\uffff")


SEARCH_LIMIT = 10_000


def _search_condition(session: Session, text: str, *, labels: bool = True):
    """Coins whose outpoint or address starts with the text, or (with `labels`) whose output or address
    label contains it (LIKE wildcards in it are literal). Each part is answered from an index, then
    combined."""
    txid = text.lower().partition(":")[0]
    ids = set(session.scalars(select(Utxo.id).where(_prefix(Utxo.txid, txid)).limit(SEARCH_LIMIT)))
    address_ids = set(session.scalars(select(Address.id).where(_prefix(Address.address, text)).limit(SEARCH_LIMIT)))
    literal = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    for type_, ref in [] if not labels else session.execute(select(Label.type, Label.ref).where(
            Label.type.in_(("output", "addr")),
            func.lower(Label.label).like("%" + literal.lower() + "%", escape="\\")).limit(SEARCH_LIMIT)):
        if type_ == "addr":
            address_ids.update(session.scalars(select(Address.id).where(Address.address == ref)))
        else:
            ref_txid, _, vout = ref.partition(":")
            if vout.isdigit():
                ids.update(session.scalars(select(Utxo.id).where(Utxo.txid == ref_txid, Utxo.vout == int(vout))))
    if address_ids:
        ids.update(session.scalars(select(Utxo.id).where(Utxo.address_id.in_(address_ids)).limit(SEARCH_LIMIT)))
    return Utxo.id.in_(sorted(ids)) if ids else false()


def value_distribution(session: Session, policy: Policy | None = None) -> list[dict]:
    """Unspent coins per power-of-ten value bucket: [{"from", "to", "count", "value"}], counted by the
    database (a value's digit count is its bucket)."""
    digits = func.length(cast(Utxo.value, String))
    query = select(digits, func.count(), func.sum(Utxo.value)).where(Utxo.spent_txid.is_(None))
    if policy is not None:
        query = query.where(Utxo.policy_id == policy.id)
    buckets = {max(n - 1, 0): (count, int(total)) for n, count, total in session.execute(query.group_by(digits))}
    return [{"from": 10 ** e, "to": 10 ** (e + 1) - 1, "count": c, "value": v} for e, (c, v) in sorted(buckets.items())]


def _utxo(session: Session, outpoint: str) -> Utxo:
    txid, sep, vout = outpoint.partition(":")
    if not sep or not vout.isdigit() or len(txid) != 64:
        raise CustodyError(f"{outpoint!r} is not an outpoint (txid:vout)")
    utxo = session.scalar(select(Utxo).where(Utxo.txid == txid.lower(), Utxo.vout == int(vout)))
    if utxo is None:
        raise NotFound(f"no coin {outpoint} in the ledger")
    return utxo


def freeze(session: Session, outpoint: str, reason: str, *, actor: str = "coordinator") -> Utxo:
    if not reason.strip():
        raise CustodyError("freezing a coin needs a reason")
    utxo = _utxo(session, outpoint)
    if utxo.spent_txid is not None:
        raise CustodyError(f"coin {outpoint} is already spent")
    utxo.frozen, utxo.freeze_reason = True, reason.strip()
    record(session, "utxo.frozen", actor, f"utxo:{outpoint}", {"reason": utxo.freeze_reason, "value": utxo.value})
    return utxo


def unfreeze(session: Session, outpoint: str, *, actor: str = "coordinator") -> Utxo:
    utxo = _utxo(session, outpoint)
    if not utxo.frozen:
        raise CustodyError(f"coin {outpoint} is not frozen")
    utxo.frozen, utxo.freeze_reason = False, None
    record(session, "utxo.unfrozen", actor, f"utxo:{outpoint}", {"value": utxo.value})
    return utxo


def history(session: Session, policy: Policy) -> list[dict]:
    """Every transaction that touched the policy, newest first, with its net effect."""
    tip = tip_height(session)
    rows = session.execute(select(ChainTransaction, PolicyTransaction)
                           .join(PolicyTransaction, PolicyTransaction.transaction_id == ChainTransaction.id)
                           .where(PolicyTransaction.policy_id == policy.id)
                           .order_by(ChainTransaction.block_height.is_(None).desc(),
                                     ChainTransaction.block_height.desc(), ChainTransaction.id.desc()))
    return [{"txid": tx.txid, "height": tx.block_height,
             "confirmations": tip - tx.block_height + 1 if tx.block_height is not None and tip is not None else 0,
             "received": link.received, "spent": link.spent, "net": link.received - link.spent}
            for tx, link in rows]


def balance_history(session: Session, policy: Policy) -> list[dict]:
    """Confirmed balance after each block where it changed: [{height, time, balance}]. Summed per
    block by the database: the dashboard draws it for every policy."""
    changes: dict[int, int] = {}
    confirmed = (Utxo.policy_id == policy.id, Utxo.height.is_not(None))
    for height, total in session.execute(select(Utxo.height, func.sum(Utxo.value)).where(*confirmed)
                                         .group_by(Utxo.height)):
        changes[height] = changes.get(height, 0) + int(total)
    for height, total in session.execute(select(Utxo.spent_height, func.sum(Utxo.value))
                                         .where(*confirmed, Utxo.spent_height.is_not(None))
                                         .group_by(Utxo.spent_height)):
        changes[height] = changes.get(height, 0) - int(total)
    times = dict(session.execute(select(Block.height, Block.time).where(Block.height.in_(list(changes)))).all()) \
        if changes else {}
    running, out = 0, []
    for height in sorted(changes):
        running += changes[height]
        out.append({"height": height, "time": times.get(height), "balance": running})
    return out


# -- BIP-329 labels ------------------------------------------------------------------------------
def set_label(session: Session, type_: str, ref: str, label: str, *, origin: str | None = None,
              spendable: bool | None = None, actor: str = "coordinator") -> Label:
    """Set one label; a change is logged (`label.set`, with the text before and after)."""
    row, previous = _put_label(session, type_, ref, label, origin, spendable)
    if previous != (row.label, row.origin, row.spendable):
        record(session, "label.set", actor, f"label:{type_}:{ref}"[:200],
               {"type": type_, "ref": ref, "label": row.label, "origin": row.origin, "spendable": row.spendable,
                "previous": None if previous is None else previous[0]})
    return row


def _put_label(session: Session, type_: str, ref: str, label: str, origin: str | None,
               spendable: bool | None) -> tuple[Label, tuple | None]:
    """The label row after the change, and (label, origin, spendable) before it (None: a new label)."""
    if type_ not in LABEL_TYPES:
        raise CustodyError(f"label type must be one of {', '.join(LABEL_TYPES)}, not {type_!r}")
    if not ref:
        raise CustodyError("a label needs a reference")
    row = session.scalar(select(Label).where(Label.type == type_, Label.ref == ref))
    previous = None if row is None else (row.label, row.origin, row.spendable)
    if row is None:
        row = Label(type=type_, ref=ref, label=label)
        session.add(row)
    row.label, row.origin = label, origin
    if spendable is not None:
        if type_ != "output":
            raise CustodyError("only output labels carry 'spendable'")
        row.spendable = spendable
    return row, previous


def import_labels(session: Session, jsonl: str, *, actor: str = "coordinator") -> int:
    """BIP-329 JSON Lines; the whole file is refused if one line is bad, naming the line."""
    return store_labels(session, parse_labels(jsonl), actor=actor)


def parse_labels(jsonl: str) -> list[dict]:
    """The checked records of a BIP-329 file, without the database (a worker process may run it);
    CustodyError naming the first bad line."""
    records = []
    for number, line in enumerate(jsonl.splitlines(), 1):
        if not line.strip():
            continue
        if len(line) > MAX_LABEL_LINE:
            raise CustodyError(f"labels line {number}: longer than {MAX_LABEL_LINE:,} characters")
        try:
            check_json_depth(line, limit=4, what="a label record")   # BIP-329 records are flat objects
        except ValueError as e:
            raise CustodyError(f"labels line {number}: {e}") from None
        try:
            record = json.loads(line)
        except ValueError:
            raise CustodyError(f"labels line {number}: not JSON") from None
        if not isinstance(record, dict) or not isinstance(record.get("type"), str) or not isinstance(record.get("ref"), str):
            raise CustodyError(f"labels line {number}: needs \"type\" and \"ref\"")
        if not record["ref"] or len(record["ref"]) > 200:
            raise CustodyError(f"labels line {number}: \"ref\" is 1 to 200 characters")
        if "origin" in record and not isinstance(record["origin"], (str, type(None))):
            raise CustodyError(f"labels line {number}: \"origin\" must be a string")
        if record["type"] not in LABEL_TYPES:
            raise CustodyError(f"labels line {number}: unknown type {record['type']!r}")
        if "label" in record and not isinstance(record["label"], str):
            raise CustodyError(f"labels line {number}: \"label\" must be a string")
        if "spendable" in record and (record["type"] != "output" or not isinstance(record["spendable"], bool)):
            raise CustodyError(f"labels line {number}: \"spendable\" is a boolean of output records only")
        records.append(record)
    return records


def store_labels(session: Session, records: list[dict], *, actor: str = "coordinator") -> int:
    """Store records that parse_labels returned; logged as one `labels.imported` entry with the counts
    and the SHA-256 of the records (an import may hold thousands of labels)."""
    counts = {"created": 0, "changed": 0, "unchanged": 0}
    for item in records:
        row, previous = _put_label(session, item["type"], item["ref"], item.get("label", ""),
                                   item.get("origin"), item.get("spendable"))
        counts["created" if previous is None else
               "changed" if previous != (row.label, row.origin, row.spendable) else "unchanged"] += 1
    digest = hashlib.sha256("".join(json.dumps(r, sort_keys=True, separators=(",", ":"), ensure_ascii=False) + "\n"
                                    for r in records).encode()).hexdigest()
    record(session, "labels.imported", actor, "labels", {"records": len(records), **counts, "sha256": digest})
    return len(records)


def export_labels(session: Session) -> str:
    lines = []
    for row in session.scalars(select(Label).order_by(Label.id)):
        record = {"type": row.type, "ref": row.ref, "label": row.label}
        if row.origin:
            record["origin"] = row.origin
        if row.spendable is not None:
            record["spendable"] = row.spendable
        lines.append(json.dumps(record, ensure_ascii=False))
    return "".join(line + "\n" for line in lines)
