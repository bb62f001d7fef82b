"""Script classification and the standardness rules Bitcoin Core applies to outputs and inputs.

The kernel judges consensus; what the mempool accepts beyond consensus (policy) is decided here,
following Bitcoin Core 29's `policy/policy.cpp` defaults.
"""
from __future__ import annotations


OP_0, OP_PUSHDATA1, OP_PUSHDATA2, OP_PUSHDATA4 = 0x00, 0x4C, 0x4D, 0x4E
OP_1NEGATE, OP_1, OP_16 = 0x4F, 0x51, 0x60
OP_RETURN, OP_DUP, OP_EQUAL, OP_EQUALVERIFY = 0x6A, 0x76, 0x87, 0x88
OP_HASH160, OP_CHECKSIG, OP_CHECKMULTISIG = 0xA9, 0xAC, 0xAE

MAX_OP_RETURN_RELAY = 83           # -datacarriersize default in Core 29
MAX_STANDARD_SCRIPTSIG_SIZE = 1650
MAX_STANDARD_P2WSH_STACK_ITEMS = 100
MAX_STANDARD_P2WSH_STACK_ITEM_SIZE = 80
MAX_STANDARD_P2WSH_SCRIPT_SIZE = 3600
MAX_STANDARD_TAPSCRIPT_STACK_ITEM_SIZE = 80
DUST_RELAY_FEE = 3000              # sat/kvB
ANCHOR_SCRIPT = bytes.fromhex("51024e73")



def push_number(n: int) -> bytes:
    """Minimal push of a script number (BIP34 height, OP_n)."""
    if n == 0:
        return bytes((OP_0,))
    if 1 <= n <= 16:
        return bytes((OP_1 + n - 1,))
    if n == -1:
        return bytes((OP_1NEGATE,))
    neg, v, out = n < 0, abs(n), bytearray()
    while v:
        out.append(v & 0xFF)
        v >>= 8
    if out[-1] & 0x80:
        out.append(0x80 if neg else 0)
    elif neg:
        out[-1] |= 0x80
    return bytes((len(out),)) + bytes(out)


def iter_ops(script: bytes):
    """Yield (opcode, pushed data or None); raises ValueError on a truncated push."""
    i, n = 0, len(script)
    while i < n:
        op = script[i]
        i += 1
        if op <= OP_PUSHDATA4:
            if op < OP_PUSHDATA1:
                size = op
            else:
                width = {OP_PUSHDATA1: 1, OP_PUSHDATA2: 2, OP_PUSHDATA4: 4}[op]
                if i + width > n:
                    raise ValueError("truncated push")
                size = int.from_bytes(script[i:i + width], "little")
                i += width
            if i + size > n:
                raise ValueError("truncated push")
            yield op, script[i:i + size]
            i += size
        else:
            yield op, None


def is_push_only(script: bytes) -> bool:
    try:
        return all(op <= OP_16 and op != 0x50 for op, _ in iter_ops(script))
    except ValueError:
        return False


def _small_int(op: int) -> int | None:
    if op == OP_0:
        return 0
    if OP_1 <= op <= OP_16:
        return op - OP_1 + 1
    return None


def witness_program(spk: bytes) -> tuple[int, bytes] | None:
    if 4 <= len(spk) <= 42 and (spk[0] == OP_0 or OP_1 <= spk[0] <= OP_16) and spk[1] + 2 == len(spk):
        return _small_int(spk[0]), spk[2:]
    return None


def classify(spk: bytes) -> str:
    """Core's TxoutType names: pubkeyhash, scripthash, witness_v0_keyhash, witness_v0_scripthash,
    witness_v1_taproot, anchor, witness_unknown, multisig, pubkey, nulldata, nonstandard."""
    n = len(spk)
    if n == 25 and spk[:3] == b"\x76\xa9\x14" and spk[23:] == b"\x88\xac":
        return "pubkeyhash"
    if n == 23 and spk[:2] == b"\xa9\x14" and spk[22] == OP_EQUAL:
        return "scripthash"
    if spk == ANCHOR_SCRIPT:
        return "anchor"
    prog = witness_program(spk)
    if prog:
        version, program = prog
        if version == 0 and len(program) == 20:
            return "witness_v0_keyhash"
        if version == 0 and len(program) == 32:
            return "witness_v0_scripthash"
        if version == 1 and len(program) == 32:
            return "witness_v1_taproot"
        if version != 0:
            return "witness_unknown"
        return "nonstandard"
    if n and spk[0] == OP_RETURN:
        return "nulldata" if is_push_only(spk[1:]) else "nonstandard"
    if n in (35, 67) and spk[0] == n - 2 and spk[-1] == OP_CHECKSIG:
        return "pubkey"
    if _is_multisig(spk):
        return "multisig"
    return "nonstandard"


def _is_multisig(spk: bytes) -> bool:
    try:
        ops = list(iter_ops(spk))
    except ValueError:
        return False
    if len(ops) < 4 or ops[-1][0] != OP_CHECKMULTISIG:
        return False
    m, n = _small_int(ops[0][0]), _small_int(ops[-2][0])
    keys = ops[1:-2]
    if m is None or n is None or not 1 <= m <= n or n != len(keys):
        return False
    return all(d is not None and len(d) in (33, 65) for _, d in keys)


def multisig_counts(spk: bytes) -> tuple[int, int]:
    ops = list(iter_ops(spk))
    return _small_int(ops[0][0]), _small_int(ops[-2][0])


def is_unspendable(spk: bytes) -> bool:
    return (len(spk) > 0 and spk[0] == OP_RETURN) or len(spk) > 10_000


def dust_threshold(spk: bytes, dust_relay_fee: int = DUST_RELAY_FEE) -> int:
    """Core's GetDustThreshold: the value below which spending the output costs more than it's worth."""
    if is_unspendable(spk):
        return 0
    size = 8 + len(spk) + (1 if len(spk) < 0xFD else 3)
    if witness_program(spk):
        size += 32 + 4 + 1 + (107 // 4) + 4
    else:
        size += 32 + 4 + 1 + 107 + 4
    return size * dust_relay_fee // 1000


def _embit():
    """embit is imported on first use of an address: its curve library costs the node's start-up."""
    from embit import script
    from embit.networks import NETWORKS
    return script, NETWORKS["regtest"]


def address_of(spk: bytes, network: dict | None = None) -> str | None:
    """The address for a scriptPubKey, or None when it has none (bare multisig, OP_RETURN, ...)."""
    kind = classify(spk)
    if kind in ("nulldata", "multisig", "pubkey", "nonstandard"):
        return None
    embit_script, regtest = _embit()
    try:
        return embit_script.Script(spk).address(network or regtest)
    except Exception:
        return None


def address_to_script(address: str, network: dict | None = None) -> bytes:
    """Decode an address of this network; raises ValueError for any other network or bad checksum."""
    embit_script, regtest = _embit()
    network = network or regtest
    hrp = network["bech32"]
    low = address.lower()
    if "1" in low and low.rsplit("1", 1)[0] in ("bc", "tb", "bcrt"):
        if low.rsplit("1", 1)[0] != hrp:
            raise ValueError("Invalid address: wrong network")
    else:
        from embit import base58
        try:
            raw = base58.decode_check(address)
        except Exception as e:
            raise ValueError(f"Invalid address: {e}") from None
        if raw[:1] not in (network["p2pkh"], network["p2sh"]):
            raise ValueError("Invalid address: wrong network")
    try:
        return embit_script.address_to_scriptpubkey(address).data
    except Exception as e:
        raise ValueError(f"Invalid address: {e}") from None


def asm(script: bytes) -> str:
    """Core's ScriptToAsmStr, without sighash decoding (as used in scriptPubKey 'asm')."""
    from bitcoin.core.script import OPCODE_NAMES
    names = {int(k): v for k, v in OPCODE_NAMES.items()}
    parts = []
    try:
        for op, data in iter_ops(script):
            if data is not None:
                if len(data) <= 4:
                    parts.append(str(_decode_num(data)) if data else "0")
                else:
                    parts.append(data.hex())
            elif OP_1 <= op <= OP_16:
                parts.append(str(op - OP_1 + 1))
            elif op == OP_1NEGATE:
                parts.append("-1")
            else:
                parts.append(names.get(op, "OP_UNKNOWN"))
    except ValueError:
        parts.append("[error]")
    return " ".join(parts)


def _decode_num(data: bytes) -> int:
    v = int.from_bytes(data, "little")
    if data[-1] & 0x80:
        return -(v & ~(0x80 << (8 * (len(data) - 1))))
    return v


OP_CHECKSIGVERIFY, OP_CHECKMULTISIGVERIFY = 0xAD, 0xAF
WITNESS_SCALE_FACTOR = 4


def sigop_count(script: bytes, accurate: bool) -> int:
    """Core's CScript::GetSigOpCount: a multisig counts its key count when `accurate` and the count
    is an OP_n just before it, else 20. A truncated script counts what came before the fault."""
    count, last = 0, None
    try:
        for op, _ in iter_ops(script):
            if op in (OP_CHECKSIG, OP_CHECKSIGVERIFY):
                count += 1
            elif op in (OP_CHECKMULTISIG, OP_CHECKMULTISIGVERIFY):
                count += last - OP_1 + 1 if accurate and last is not None and OP_1 <= last <= OP_16 else 20
            last = op
    except ValueError:
        pass
    return count


def sigop_cost(tx, spent_scripts: list[bytes]) -> int:
    """Core's GetTransactionSigOpCost: legacy and P2SH sigops scaled by 4, plus witness sigops."""
    cost = sum(sigop_count(i.script_sig, False) for i in tx.vin) + \
        sum(sigop_count(o.script_pubkey, False) for o in tx.vout)
    cost *= WITNESS_SCALE_FACTOR
    if tx.is_coinbase():
        return cost
    for txin, spk in zip(tx.vin, spent_scripts):
        program_source = spk
        if classify(spk) == "scripthash":
            pushes = [data for _, data in iter_ops(txin.script_sig)] if is_push_only(txin.script_sig) else []
            if pushes and pushes[-1] is not None:
                redeem = pushes[-1]
                cost += sigop_count(redeem, True) * WITNESS_SCALE_FACTOR
                program_source = redeem
        program = witness_program(program_source)
        if program is None:
            continue
        version, data = program
        if version == 0 and len(data) == 20:
            cost += 1
        elif version == 0 and len(data) == 32 and txin.witness:
            cost += sigop_count(txin.witness[-1], True)
    return cost
