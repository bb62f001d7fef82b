"""The auditor's verification of a proof-of-reserves package, against the auditor's own node.

Each check returns a verdict: valid, invalid, or inconclusive (could not be decided: an unknown script
template, a block not yet buried deep enough, a node that moved while we read it). The proof is valid
only when every check is valid; anything else fails closed.

Nothing the package says about coins is believed: amounts, scripts, heights and coinbase flags are
read from the node; the package's claims only say where to look, and each is compared with what was
found. This module depends on `audit` alone (its own node client, `audit.rpc`), nothing of the
custodian's: the auditor runs it without custody/, coordinator/ or the signer installed.
"""
from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import dataclass, field

from embit.descriptor import Descriptor
from embit.descriptor.checksum import checksum

from . import chain, commitment, log_checkpoint, proof_format, scripts, txparse
from .rpc import Node, is_rpc_error

VALID, INVALID, INCONCLUSIVE = "valid", "invalid", "inconclusive"
COINBASE_MATURITY = 100
DEFAULT_MIN_DEPTH = 6
MISMATCH = "the package's coins are not the transaction's inputs 1..n"
CHECKS = ("challenge", "commitment", "structure", "sighash", "scripts", "policy", "chain", "maturity", "total")
_NODE_CHAIN = {"main": "main", "test": "test", "testnet4": "testnet4", "signet": "signet", "regtest": "regtest"}
_MULTISIG = re.compile(r"^wsh\((sortedmulti|multi)\((\d+),(.+)\)\)$")
_TAPROOT_MULTISIG = re.compile(r"^tr\(([0-9a-f]{64}),(sortedmulti_a|multi_a)\((\d+),(.+)\)\)$")
_KEY = re.compile(r"^\[([0-9a-f]{8})((?:/\d+h?)*)\]([a-km-zA-HJ-NP-Z1-9]{100,112})/<0;1>/\*$")


@dataclass
class Check:
    name: str
    verdict: str
    detail: str


@dataclass
class Verification:
    checks: list[Check] = field(default_factory=list)
    total: int = 0
    coins: int = 0
    timings: dict = field(default_factory=dict)
    node: dict = field(default_factory=dict)

    @property
    def verdict(self) -> str:
        verdicts = {c.verdict for c in self.checks}
        if INVALID in verdicts:
            return INVALID
        if verdicts != {VALID} or not set(CHECKS) <= {c.name for c in self.checks}:
            return INCONCLUSIVE
        return VALID

    def add(self, name: str, verdict: str, detail: str) -> None:
        self.checks.append(Check(name, verdict, detail))


class PackageError(ValueError):
    """The file is not a proof-of-reserves package at all."""


def load_package(text: str) -> dict:
    try:
        package = json.loads(text)
    except ValueError as e:
        raise PackageError(f"the package is not JSON ({e})") from None
    if not isinstance(package, dict) or package.get("format") != proof_format.PACKAGE_FORMAT:
        raise PackageError(f"not a proof-of-reserves package (format must be {proof_format.PACKAGE_FORMAT!r})")
    needed = {"network": str, "kind": str, "message": str, "height": int, "block_hash": str, "descriptors": list,
              "coins": list, "total": int, "transaction": str, "custodian": str, "audit": str, "nonce": str}
    for name, kind in needed.items():
        if not isinstance(package.get(name), kind) or isinstance(package.get(name), bool):
            raise PackageError(f"the package's {name!r} is missing or not a {kind.__name__}")
    if package["height"] < 0:
        raise PackageError("the package's height is negative")
    return package


def verify(package: dict, client: Node, *, nonce: str, audit: str | None = None,
           min_depth: int = DEFAULT_MIN_DEPTH, workers: int | None = None, progress=None,
           checkpoints: list[dict] | None = None) -> Verification:
    """Run every check; never raises for a bad proof (that is a verdict), only for an unreachable node.
    `checkpoints`: the auditor's kept event-log checkpoints (checked documents, `log_checkpoint.load_files`)
    the package's event-log head must not contradict."""
    result = Verification()
    started = time.perf_counter()
    info = client.getblockchaininfo()
    tip, tip_hash = info["blocks"], info["bestblockhash"]
    result.node = {"chain": info["chain"], "tip_height": tip, "tip_hash": tip_hash}
    message = package["message"].encode()
    try:
        tx = txparse.parse(bytes.fromhex(package["transaction"]))
    except ValueError as e:
        for name in CHECKS:
            result.add(name, INVALID, f"the proof transaction does not parse: {e}")
        return result
    claims = _coin_claims(package)
    result.coins = len(claims) if claims else 0
    _challenge(result, package, message, client, nonce, audit, info)
    _commitment(result, package, tx, message)
    # The package's own claims (declared scripts, amounts) let the interpreter start on every core while
    # the node is asked; whatever the node then says differently is checked again with the node's values.
    t = time.perf_counter()
    claimed = _claimed_scripts(package) if claims is not None else "the package's coin list is malformed"
    result.timings["derivation_s"] = round(time.perf_counter() - t, 3)
    raw = bytes.fromhex(package["transaction"])
    job = None
    if isinstance(claimed, list) and len(claimed) == len(tx.inputs) - 1:
        job = scripts.start(raw, [(proof_format.OP_TRUE, 0)] + claimed, workers)
    found = None
    try:
        if claims is not None and package["height"] <= tip:
            t = time.perf_counter()
            found = chain.look_up(client, claims, package["height"], tip, progress=progress)
            result.timings["chain_lookup_s"] = round(time.perf_counter() - t, 3)
        _structure(result, package, tx, claims, found)
        _sighash(result, tx, found)
        t = time.perf_counter()
        _scripts(result, package, tx, raw, found, job, claimed, workers)
        result.timings["script_verification_wait_s"] = round(time.perf_counter() - t, 3)
    finally:
        if job is not None:
            job.close()
    _policy(result, package, tx, found, claimed)
    _chain(result, package, client, found, tip, tip_hash, min_depth)
    _maturity(result, package, found)
    _total(result, package, tx, found)
    _event_log(result, package, checkpoints)
    result.total = sum(c.amount for c in found) if found else 0
    result.timings["total_s"] = round(time.perf_counter() - started, 3)
    return result


def _coin_claims(package: dict) -> list[tuple[str, int, int]] | None:
    claims = []
    for coin in package["coins"]:
        try:
            txid, vout = coin["outpoint"].split(":")
            if not re.fullmatch(r"[0-9a-f]{64}", txid):
                return None
            claims.append((txid, int(vout), int(coin["height"])))
        except (KeyError, ValueError, TypeError, AttributeError):
            return None
    return claims


# -- the checks, in the order of the report ---------------------------------------------------------------------
def _challenge(result: Verification, package: dict, message: bytes, client: Node, nonce: str,
               audit: str | None, info: dict) -> None:
    try:
        fields = proof_format.parse_message(message)
    except proof_format.ProofFormatError as e:
        return result.add("challenge", INVALID, str(e))
    if fields["nonce"] != nonce:
        return result.add("challenge", INVALID, f"the message carries nonce {fields['nonce']!r}, not this audit's "
                                                f"{nonce!r}: a proof made for another challenge")
    if audit is not None and fields["audit"] != audit:
        return result.add("challenge", INVALID, f"the message is for audit {fields['audit']!r}, not {audit!r}")
    for name, key in (("custodian", "custodian"), ("audit", "audit"), ("nonce", "nonce"), ("height", "height")):
        if fields[key] != package[name]:
            return result.add("challenge", INVALID, f"the package says {name} {package[name]!r}, the signed message "
                                                    f"says {fields[key]!r}")
    if _NODE_CHAIN.get(package["network"], package["network"]) != info["chain"]:
        return result.add("challenge", INVALID, f"the proof is for network {package['network']!r}; this node "
                                                f"follows {info['chain']!r}")
    try:
        header = client.getblockheader(fields["recent block"])
    except Exception as e:
        if not is_rpc_error(e):
            raise
        return result.add("challenge", INVALID, f"the recent block {fields['recent block']} is unknown to this node")
    if header.get("confirmations", -1) < 1:
        return result.add("challenge", INVALID, "the recent block the message names is not on the best chain")
    if header["height"] < fields["height"]:
        return result.add("challenge", INVALID, f"the recent block (height {header['height']}) is older than "
                                                f"the proof height {fields['height']}")
    result.add("challenge", VALID, f"audit {fields['audit']!r}, nonce matches, recent block {header['height']} "
                                   "on the best chain")


def _commitment(result: Verification, package: dict, tx: txparse.Tx, message: bytes) -> None:
    first = tx.inputs[0] if tx.inputs else None
    kind = next((k for k in proof_format.KINDS if first and first.vout == 0
                 and first.txid == proof_format.commitment_outpoint(message, k).hex()), None)
    if kind is None:
        variant = commitment.detect(bytes.fromhex(first.txid)[::-1], message) if first else None
        why = (f"input 0 commits to the message with the non-standard variant {variant!r}" if variant
               else "input 0 does not commit to this message")
        return result.add("commitment", INVALID, why)
    if kind != package["kind"]:
        return result.add("commitment", INVALID, f"input 0 commits in {kind} form; the package says {package['kind']}")
    if first.script_sig or first.witness:
        return result.add("commitment", INVALID, "input 0 carries a script or witness; a commitment carries none")
    result.add("commitment", VALID, f"input 0 commits to the exact message ({kind})")


def _structure(result: Verification, package: dict, tx: txparse.Tx, claims, found) -> None:
    if claims is None:
        return result.add("structure", INVALID, "the package's coin list is malformed")
    outpoints = [(i.txid, i.vout) for i in tx.inputs[1:]]
    if len(set(outpoints)) != len(outpoints):
        seen, dup = set(), None
        for o in outpoints:
            if o in seen:
                dup = o
                break
            seen.add(o)
        return result.add("structure", INVALID, f"coin {dup[0]}:{dup[1]} is an input twice (it would be counted twice)")
    if outpoints != [(txid, vout) for txid, vout, _ in claims]:
        return result.add("structure", INVALID, MISMATCH)
    if not outpoints:
        return result.add("structure", INVALID, "the proof proves no coin")
    if tx.version not in (0, 2):
        return result.add("structure", INCONCLUSIVE, f"transaction version {tx.version}: BIP-322 knows 0 and 2 only")
    if len(tx.outputs) != 1 or tx.outputs[0][1] != proof_format.OP_RETURN:
        return result.add("structure", INVALID, "a proof has exactly one output, a bare OP_RETURN")
    if found is None or any(c.found for c in found):
        return result.add("structure", INCONCLUSIVE, "the fee cannot be computed: some coins were not found")
    held = sum(c.amount for c in found)
    paid = tx.outputs[0][0]
    if paid != held:
        return result.add("structure", INVALID, f"non-zero fee: the inputs hold {held} sat, the output burns {paid} "
                                                f"sat (fee {held - paid} sat)")
    result.add("structure", VALID, f"{len(outpoints)} distinct coins, one OP_RETURN output, zero fee")


def _sighash(result: Verification, tx: txparse.Tx, found) -> None:
    if found is None or any(c.found for c in found):
        return result.add("sighash", INCONCLUSIVE, "not every coin's script is known")
    if len(found) != len(tx.inputs) - 1:
        return result.add("sighash", INVALID, MISMATCH)
    signatures = 0
    for n, (inp, coin) in enumerate(zip(tx.inputs[1:], found), start=1):
        sigs = scripts.signatures_in(inp.witness, coin.script_pubkey)
        if sigs is None:
            return result.add("sighash", INCONCLUSIVE, f"input {n}: a script template this verifier does not know")
        taproot = coin.script_pubkey[:2] == b"\x51\x20"
        for sig in sigs:
            problem = scripts.sighash_problem(sig, taproot)
            if problem:
                return result.add("sighash", INVALID, f"input {n}: a signature with {problem}; only SIGHASH_ALL "
                                                      "(DEFAULT for taproot), strict DER, low S is accepted")
            signatures += 1
    result.add("sighash", VALID, f"all {signatures} signatures are SIGHASH_ALL/DEFAULT")


def _scripts(result: Verification, package: dict, tx: txparse.Tx, raw: bytes, found, job, claimed,
             workers) -> None:
    if found is None or any(c.found for c in found):
        return result.add("scripts", INCONCLUSIVE, "not every coin's script is known")
    if len(found) != len(tx.inputs) - 1:
        return result.add("scripts", INVALID, MISMATCH)
    actual = [(proof_format.OP_TRUE, 0)] + [(c.script_pubkey, c.amount) for c in found]
    if job is not None and [(proof_format.OP_TRUE, 0)] + claimed == actual:
        failures = job.result()
    else:                      # the package claimed other scripts or amounts: check with the node's
        failures = scripts.verify_inputs(raw, actual, workers)
    failures = [f for f in failures if f[0] != 0 or package["kind"] == "bip322"]   # bip127's input 0 spends nothing
    if failures:
        n, why = failures[0]
        return result.add("scripts", INVALID, f"{len(failures)} inputs fail Bitcoin Core's script check; input {n}: {why}")
    result.add("scripts", VALID, f"{len(found)} inputs pass libbitcoinkernel's script verification")


def _claimed_scripts(package: dict) -> list[tuple[bytes, int]] | str | tuple[str, str]:
    """(scriptPubKey, amount) per coin as the declared descriptors derive them at the claimed branch and
    index, or why that cannot be done: a message (invalid), or (INCONCLUSIVE, message)."""
    declared = []
    for n, entry in enumerate(package["descriptors"]):
        try:
            declared.append(_declared(entry, package["network"]))
        except UnknownTemplate as e:
            return (INCONCLUSIVE, f"descriptor {n}: {e}")
        except ValueError as e:
            return f"descriptor {n}: {e}"
    cache: dict[tuple[int, int, int], bytes] = {}
    branches: dict = {}
    out = []
    for n, claim in enumerate(package["coins"], start=1):
        try:
            d, branch, index, amount = int(claim["descriptor"]), int(claim["branch"]), int(claim["index"]), claim["amount"]
        except (KeyError, TypeError, ValueError):
            return f"input {n}: the package does not say which descriptor and index"
        if not isinstance(amount, int) or isinstance(amount, bool) or amount < 0:
            return f"input {n}: the package's amount is not a whole number of satoshis"
        if not 0 <= d < len(declared):
            return f"input {n}: descriptor {d} was not declared"
        descriptor, (low, high), _ = declared[d]
        if branch not in (0, 1) or not low <= index <= high:
            return f"input {n}: branch {branch} index {index} is outside the declared range {low}..{high}"
        key = (d, branch, index)
        if key not in cache:
            cache[key] = _derive(descriptor, branch, index, branches)
        out.append((cache[key], amount))
    return out


def _derive(descriptor: Descriptor, branch: int, index: int, branches: dict) -> bytes:
    """The descriptor's scriptPubKey at branch/index. For wsh multisig each key's branch key is derived
    once and only the last step runs per index (embit's `derive` would redo every step for every index)."""
    if descriptor.is_taproot or descriptor.miniscript is None:
        return descriptor.derive(index, branch_index=branch).script_pubkey().data
    ident = (id(descriptor), branch)
    if ident not in branches:
        branches[ident] = [k.key.child(branch) for k in descriptor.keys]      # keys end in /<0;1>/* (_KEY)
    pubs = [b.child(index).key.sec() for b in branches[ident]]
    if type(descriptor.miniscript).__name__ == "Sortedmulti":
        pubs.sort()
    m = descriptor.miniscript.args[0].num
    script = bytes([0x50 + m]) + b"".join(b"\x21" + p for p in pubs) + bytes([0x50 + len(pubs), 0xAE])
    return b"\x00\x20" + hashlib.sha256(script).digest()


def _policy(result: Verification, package: dict, tx: txparse.Tx, found, claimed) -> None:
    if isinstance(claimed, tuple):
        return result.add("policy", *claimed)
    if isinstance(claimed, str):
        return result.add("policy", INVALID, claimed)
    if found is None or any(c.found for c in found):
        return result.add("policy", INCONCLUSIVE, "not every coin's script is known")
    if len(found) != len(tx.inputs) - 1:
        return result.add("policy", INVALID, MISMATCH)
    thresholds = [_declared(e, package["network"])[2] for e in package["descriptors"]]
    for n, ((script, _), claim, coin) in enumerate(zip(claimed, package["coins"], found), start=1):
        if script != coin.script_pubkey:
            return result.add("policy", INVALID, f"input {n}: the coin's script is not descriptor {claim['descriptor']}'s "
                                                 f"at {claim['branch']}/{claim['index']}")
        sigs = scripts.signatures_in(tx.inputs[n].witness, coin.script_pubkey) or []
        if len(sigs) < thresholds[int(claim["descriptor"])]:
            return result.add("policy", INVALID, f"input {n}: {len(sigs)} signatures, the threshold is "
                                                 f"{thresholds[int(claim['descriptor'])]}")
    result.add("policy", VALID, f"every coin derives from a declared descriptor within its range; keys distinct; "
                                f"thresholds met ({len({s for s, _ in claimed})} scripts)")


class UnknownTemplate(ValueError):
    """A descriptor this verifier cannot judge: the check is inconclusive."""


def _declared(entry: dict, network: str) -> tuple[Descriptor, tuple[int, int], int]:
    text = entry.get("descriptor") if isinstance(entry, dict) else None
    if not isinstance(text, str):
        raise ValueError("no descriptor text")
    body, sep, given = text.partition("#")
    if sep and given != checksum(body):
        raise ValueError("its checksum is wrong")
    match = _MULTISIG.match(body)
    if match:
        m, keys = int(match.group(2)), match.group(3).split(",")
    else:
        match = _TAPROOT_MULTISIG.match(body)
        if not match:
            raise UnknownTemplate(f"{body[:40]}… is not a multisig template this verifier knows")
        m, keys = int(match.group(3)), match.group(4).split(",")
    parsed = [_KEY.match(k) for k in keys]
    if not all(parsed):
        raise ValueError("a key is not an origin-tagged extended key with /<0;1>/*")
    xpubs = [p.group(3) for p in parsed]
    if len(set(xpubs)) != len(xpubs) or len({p.group(1) for p in parsed}) != len(parsed):
        raise ValueError("the same key (or the same device fingerprint) appears twice: keys must be distinct")
    testnet = network != "main"
    if any(x.startswith("tpub") != testnet for x in xpubs):
        raise ValueError(f"its keys are not {network} keys (wrong network)")
    if not 1 <= m <= len(keys) or entry.get("threshold") != m or entry.get("keys") != len(keys):
        raise ValueError(f"the declared threshold {entry.get('threshold')}-of-{entry.get('keys')} is not the "
                         f"descriptor's {m}-of-{len(keys)}")
    span = entry.get("range")
    if not (isinstance(span, list) and len(span) == 2 and all(isinstance(v, int) for v in span)
            and 0 <= span[0] <= span[1] < 2 ** 31):
        raise ValueError("its range is not [first, last]")
    return Descriptor.from_string(body), (span[0], span[1]), m


def _chain(result: Verification, package: dict, client: Node, found, tip: int, tip_hash: str,
           min_depth: int) -> None:
    height = package["height"]
    if height > tip:
        return result.add("chain", INVALID, f"height {height} is above this node's tip {tip}")
    if client.getblockhash(height) != package["block_hash"]:
        return result.add("chain", INVALID, f"block {package['block_hash']} is not at height {height} of this "
                                            "node's best chain (reorganised away, or another chain)")
    if found is None:
        return result.add("chain", INVALID, "the package's coin list is malformed")
    for coin in found:
        txid, vout = coin.outpoint
        if coin.found:
            return result.add("chain", INVALID, f"coin {txid}:{vout}: {coin.found}")
        if coin.height > height:
            return result.add("chain", INVALID, f"coin {txid}:{vout} was created at height {coin.height}, after the "
                                                f"proof height {height}")
        if not coin.unspent_at_tip and coin.spent_at is None:
            return result.add("chain", INVALID, f"coin {txid}:{vout} was spent at or before height {height}")
    if client.getbestblockhash() != tip_hash:
        return result.add("chain", INCONCLUSIVE, "the node's best chain changed while the proof was checked; run again")
    depth = tip - height + 1
    if depth < min_depth:
        return result.add("chain", INCONCLUSIVE, f"block {height} is buried {depth} deep; the audit asks for "
                                                 f"{min_depth} (wait and run again)")
    result.add("chain", VALID, f"block {height} on the best chain, {depth} deep; every coin created at or before it "
                               "and unspent at it")


def _maturity(result: Verification, package: dict, found) -> None:
    if found is None or any(c.found for c in found):
        return result.add("maturity", INCONCLUSIVE, "not every coin was found")
    spend_height = package["height"] + 1
    for coin in found:
        if coin.coinbase and spend_height - coin.height < COINBASE_MATURITY:
            return result.add("maturity", INVALID, f"coinbase coin {coin.outpoint[0]}:{coin.outpoint[1]} (height "
                                                   f"{coin.height}) was not spendable at the proof height")
    coinbase = sum(1 for c in found if c.coinbase)
    result.add("maturity", VALID, f"{coinbase} coinbase coins, all mature at the proof height")


def _total(result: Verification, package: dict, tx: txparse.Tx, found) -> None:
    if found is None or any(c.found for c in found):
        return result.add("total", INCONCLUSIVE, "not every coin was found")
    held = sum(c.amount for c in found)
    amounts = [c.get("amount") for c in package["coins"]]
    if held != package["total"] or amounts != [c.amount for c in found]:
        return result.add("total", INVALID, f"the package claims {package['total']} sat; the node says the coins "
                                            f"hold {held} sat")
    result.add("total", VALID, f"{held} sat in {len(found)} coins")


def solvency(result: Verification, published_root: dict) -> None:
    """Liabilities (the published sum tree's total) must not exceed the reserves just proven."""
    liabilities = published_root.get("total")
    if not isinstance(liabilities, int) or isinstance(liabilities, bool) or liabilities < 0:
        return result.add("solvency", INVALID, "the published liabilities root has no whole-satoshi total")
    if result.verdict != VALID:
        return result.add("solvency", INCONCLUSIVE, "the reserves were not proven, so solvency cannot be judged")
    if liabilities > result.total:
        return result.add("solvency", INVALID, f"liabilities {liabilities} sat exceed reserves {result.total} sat")
    result.add("solvency", VALID, f"liabilities {liabilities} sat <= reserves {result.total} sat "
                                  f"(root {published_root.get('root')})")


def _event_log(result: Verification, package: dict, kept: list[dict] | None) -> None:
    """The custodian's event-log head at the proof, signed as a checkpoint. Not one of CHECKS: packages
    from other tools carry none; but one that is there must hold, and with kept checkpoints it must be."""
    if "event_log" not in package:
        if kept:
            result.add("event log", INCONCLUSIVE, "the package carries no event-log head to check against your "
                                                  f"{len(kept)} kept checkpoints")
        return
    try:
        head = log_checkpoint.check(package["event_log"])
    except log_checkpoint.CheckpointError as e:
        return result.add("event log", INVALID, f"the event-log head: {e}")
    problem = log_checkpoint.against_kept(head, kept or [])
    if problem:
        return result.add("event log", INVALID, problem)
    against = (f"consistent with your {len(kept)} kept checkpoints (latest seq {kept[-1]['seq']}, "
               f"{kept[-1]['time']})" if kept else "keep it (custody-audit keeps it with --checkpoints DIR) to check "
               "later proofs against it")
    result.add("event log", VALID, f"head at seq {head['seq']} ({head['head_hash']}) of {head['time']}, signed by "
                                   f"coordinator key {head['key_id']}; {against}")


def package_digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()
