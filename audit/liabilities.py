"""Liabilities: a Merkle sum tree of client balances, its root, and per-client inclusion proofs.

Maxwell's original sum tree let a prover under-report: a parent committed to the sum of its children,
not to each child's sum, so one child could be shown negative. Here every parent hash commits to both
children and both their sums, `H("node" ‖ hL ‖ vL ‖ hR ‖ vR)`, every sum is a non-negative whole number
of satoshis checked on the way up, and each leaf hides its client behind a salt only that client is
given: `H("leaf" ‖ salt ‖ H(client id) ‖ balance)`. The published root is (hash, total, number of leaves).
A client checks their own inclusion proof against it with one command; a missing client has none.
"""
from __future__ import annotations

import csv
import hashlib
import hmac
import io
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

COIN = 100_000_000
MAX_SATS = 21_000_000 * COIN
PAD = hashlib.sha256(b"custody liabilities pad").digest()     # the sibling of a level's odd last node


class LiabilityError(ValueError):
    """Refused input or a proof that does not hold; the message says which and where."""


def _value(v: int) -> bytes:
    return v.to_bytes(8, "big")


def leaf_hash(salt: bytes, client: str, balance: int) -> bytes:
    return hashlib.sha256(b"leaf" + salt + hashlib.sha256(client.encode()).digest() + _value(balance)).digest()


def node_hash(left: bytes, left_sum: int, right: bytes, right_sum: int) -> bytes:
    return hashlib.sha256(b"node" + left + _value(left_sum) + right + _value(right_sum)).digest()


def parse_balance(text: str, line: int) -> int:
    """'0.5' BTC or '50000sat' to satoshis, exactly; negative or fractional satoshis are refused."""
    t = text.strip().lower()
    try:
        sats = Decimal(t.removesuffix("sat")) if t.endswith("sat") else Decimal(t.removesuffix("btc")) * COIN
    except InvalidOperation:
        raise LiabilityError(f"line {line}: {text!r} is not an amount") from None
    if not sats.is_finite() or sats != sats.to_integral_value():
        raise LiabilityError(f"line {line}: {text!r} is not a whole number of satoshis")
    if sats < 0:
        raise LiabilityError(f"line {line}: {text!r} is negative; a client balance cannot be")
    if sats > MAX_SATS:
        raise LiabilityError(f"line {line}: {text!r} is more bitcoin than exists")
    return int(sats)


def read_csv(text: str) -> list[tuple[str, int]]:
    """`client,balance` rows (a header line first); each client once."""
    rows = list(csv.reader(io.StringIO(text)))
    if not rows or [c.strip().lower() for c in rows[0]] != ["client", "balance"]:
        raise LiabilityError("the first line must be the header: client,balance")
    seen, out = set(), []
    for line, row in enumerate(rows[1:], start=2):
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) != 2 or not row[0].strip():
            raise LiabilityError(f"line {line}: expected client,balance")
        client = row[0].strip()
        if client in seen:
            raise LiabilityError(f"line {line}: client {client!r} appears twice")
        seen.add(client)
        out.append((client, parse_balance(row[1], line)))
    if not out:
        raise LiabilityError("no client balances")
    return out


@dataclass(frozen=True)
class Tree:
    levels: list[list[tuple[bytes, int]]]       # levels[0]: leaves in order; levels[-1]: [root]
    clients: list[str]
    salts: list[bytes]

    @property
    def root(self) -> tuple[bytes, int]:
        return self.levels[-1][0]

    def published(self) -> dict:
        digest, total = self.root
        return {"root": digest.hex(), "total": total, "leaves": len(self.clients)}

    def proof(self, client: str) -> dict:
        """What one client is given: their salt, balance and the siblings up to the root."""
        try:
            return self.proof_at(self.clients.index(client))
        except ValueError:
            raise LiabilityError(f"no client {client!r} in this tree") from None

    def proof_at(self, index: int) -> dict:
        """The proof for the client at `index` (in the order the tree was built)."""
        client, salt, balance = self.clients[index], self.salts[index], self.levels[0][index][1]
        path = []
        for level in self.levels[:-1]:
            sibling = index ^ 1
            digest, value = level[sibling] if sibling < len(level) else (PAD, 0)
            path.append({"side": "left" if sibling < index else "right", "hash": digest.hex(), "sum": value})
            index //= 2
        return {"client": client, "salt": salt.hex(), "balance": balance, "path": path, **self.published()}


def build(balances: list[tuple[str, int]], secret: bytes) -> Tree:
    """The tree over `balances` in the given order; salts are HMAC(secret, client) so a rebuild with the
    same secret gives the same tree (the secret stays with the custodian)."""
    clients = [c for c, _ in balances]
    salts = [hmac.new(secret, c.encode(), hashlib.sha256).digest() for c in clients]
    level = [(leaf_hash(s, c, v), v) for s, (c, v) in zip(salts, balances)]
    levels = [level]
    while len(level) > 1:
        pairs = [(level[i], level[i + 1] if i + 1 < len(level) else (PAD, 0)) for i in range(0, len(level), 2)]
        level = [(node_hash(lh, lv, rh, rv), lv + rv) for (lh, lv), (rh, rv) in pairs]
        levels.append(level)
    return Tree(levels, clients, salts)


def verify_inclusion(proof: dict, *, root: str | None = None, total: int | None = None) -> int:
    """Recompute the root from a client's proof; returns the balance it proves. `root` and `total` are the
    published figures to hold it against (else the proof's own copies, which the client should compare)."""
    try:
        balance, salt = proof["balance"], bytes.fromhex(proof["salt"])
        if type(balance) is not int or not 0 <= balance <= MAX_SATS:
            raise LiabilityError("the proof's balance is not a non-negative whole number of satoshis")
        digest, value = leaf_hash(salt, str(proof["client"]), balance), balance
        for depth, step in enumerate(proof["path"]):
            sibling, sibling_sum = bytes.fromhex(step["hash"]), step["sum"]
            if type(sibling_sum) is not int or not 0 <= sibling_sum <= MAX_SATS:
                raise LiabilityError(f"level {depth}: a sibling sum of {sibling_sum!r} (sums are non-negative)")
            if step["side"] == "left":
                digest, value = node_hash(sibling, sibling_sum, digest, value), sibling_sum + value
            elif step["side"] == "right":
                digest, value = node_hash(digest, value, sibling, sibling_sum), value + sibling_sum
            else:
                raise LiabilityError(f"level {depth}: side must be left or right")
        expected_root = root or proof["root"]
        expected_total = proof["total"] if total is None else total
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        if isinstance(e, LiabilityError):
            raise
        raise LiabilityError(f"the proof is malformed ({e})") from None
    if digest.hex() != expected_root:
        raise LiabilityError("the proof does not lead to the published root: this balance is not in the tree")
    if value != expected_total:
        raise LiabilityError(f"the proof adds up to {value} sat, the published total is {expected_total} sat")
    return balance


def verify_tree(levels: list[list[tuple[str, int]]]) -> tuple[str, int]:
    """Check a whole exported tree (each node as (hash hex, sum)): every parent's hash and sum from its
    two children. Returns the root; raises naming the first node that does not add up."""
    for depth in range(len(levels) - 1):
        below, above = levels[depth], levels[depth + 1]
        if len(above) != (len(below) + 1) // 2:
            raise LiabilityError(f"level {depth + 1} has {len(above)} nodes for {len(below)} below")
        for i, (digest, total) in enumerate(above):
            (lh, lv) = below[2 * i]
            (rh, rv) = below[2 * i + 1] if 2 * i + 1 < len(below) else (PAD.hex(), 0)
            if min(lv, rv, total) < 0 or total != lv + rv:
                raise LiabilityError(f"node {i} at level {depth + 1}: sums {lv} + {rv} do not make {total}")
            if node_hash(bytes.fromhex(lh), lv, bytes.fromhex(rh), rv).hex() != digest:
                raise LiabilityError(f"node {i} at level {depth + 1}: its hash does not commit to its children")
    digest, total = levels[-1][0]
    return digest, total


def export_levels(tree: Tree) -> list[list[tuple[str, int]]]:
    return [[(d.hex(), v) for d, v in level] for level in tree.levels]


def solvency(liabilities_total: int, reserves_total: int) -> dict:
    """Liabilities must not exceed reserves (both in satoshis, measured at the same height)."""
    return {"liabilities": liabilities_total, "reserves": reserves_total,
            "verdict": "valid" if liabilities_total <= reserves_total else "invalid",
            "surplus": reserves_total - liabilities_total}
