"""Fast address derivation for custody policies, on every core.

Every key of a policy is derived to its branch (KEY/0 or KEY/1) once and cached; per index only the
last, non-hardened BIP-32 step runs: HMAC-SHA512(chain code, pubkey || index), then the child point
K + IL·G in libsecp256k1 (`ec_pubkey_create(IL)` + `ec_pubkey_combine`, through coincurve's cffi
binding, or embit's ctypes binding of its bundled library when coincurve's is missing). The script
is assembled from the child keys directly: the witness script of `sortedmulti` / `multi` / the
recovery miniscript and its sha256, or for taproot the `sortedmulti_a` leaf, its TapLeaf/TapTweak
hashes and one more point addition onto the NUMS key. Addresses use a table-driven bech32/bech32m
encoder. Large ranges are split across processes (fork; forkserver when the caller has threads).

All five policy kinds take the fast path. Results are identical to embit's
`spec.embit(branch).derive(i).script_pubkey()`: the tests compare every kind on both branches, and
each process checks the first index it derives for a (policy, branch) against embit before
trusting the fast path (a mismatch raises rather than hand out an address nobody can spend). In
the ~2^-127 case where BIP-32 declares a child invalid, that index is left to embit, so even that
outcome is embit's.
"""
from __future__ import annotations

import hashlib
import hmac
import multiprocessing
import os
import sys
import threading
from concurrent.futures import ProcessPoolExecutor
from functools import lru_cache, reduce
from operator import xor

from embit.bip32 import HDKey
from embit.descriptor import Descriptor
from embit.descriptor.checksum import checksum as _descriptor_checksum
from embit.hashes import hash160

from custody.bitcoin.policies import NETWORK_PARAMS, NUMS_KEY, parse_policy, PolicyError, PolicySpec

PARALLEL_THRESHOLD = 2_000        # below this many indexes a process pool costs more than it saves
CHUNK_MIN = 250                   # indexes per chunk handed to a worker, at least
MAX_INDEX = (1 << 31) - 1         # the last non-hardened child
MAX_DESCRIPTOR_RANGE = 1_000_000  # Bitcoin Core's deriveaddresses limit on end - begin + 1


# -- libsecp256k1: sec(K + t·G) for one fixed K and many t -----------------------------------------
def _cffi_adder_factory():
    """coincurve's cffi binding of libsecp256k1 (a declared dependency; the faster build and calls)."""
    from coincurve._libsecp256k1 import ffi, lib
    from coincurve.context import GLOBAL_CONTEXT
    ctx = GLOBAL_CONTEXT.ctx
    create, combine = lib.secp256k1_ec_pubkey_create, lib.secp256k1_ec_pubkey_combine
    serialize, compressed = lib.secp256k1_ec_pubkey_serialize, lib.SECP256K1_EC_COMPRESSED

    def adder(sec: bytes):
        base = ffi.new("secp256k1_pubkey *")
        if not lib.secp256k1_ec_pubkey_parse(ctx, base, sec, len(sec)):
            raise ValueError("invalid public key")
        term, total = ffi.new("secp256k1_pubkey *"), ffi.new("secp256k1_pubkey *")
        pair = ffi.new("secp256k1_pubkey *[2]", [base, term])
        out, size = ffi.new("unsigned char[33]"), ffi.new("size_t *")
        buf = ffi.buffer(out)
        keep = (base, term)     # `pair` holds raw pointers: these must outlive it

        def add(tweak: bytes, _keep=keep) -> bytes | None:
            # create() refuses t = 0 and t >= n, combine() a sum at infinity: None, left to embit
            if not create(ctx, term, tweak) or not combine(ctx, total, pair, 2):
                return None
            size[0] = 33
            serialize(ctx, out, size, total, compressed)
            return buf[:]
        return add
    return adder


def _ctypes_adder_factory():
    """embit's ctypes binding of its bundled libsecp256k1 (no lock needed: every buffer is per adder)."""
    import ctypes
    from embit.util import ctypes_secp256k1 as binding
    lib = binding._secp
    ctx = lib.ctx
    create, combine = lib.secp256k1_ec_pubkey_create, lib.secp256k1_ec_pubkey_combine
    serialize, compressed = lib.secp256k1_ec_pubkey_serialize, binding.EC_COMPRESSED

    def adder(sec: bytes):
        base = ctypes.create_string_buffer(64)
        if not lib.secp256k1_ec_pubkey_parse(ctx, base, sec, len(sec)):
            raise ValueError("invalid public key")
        term, total = ctypes.create_string_buffer(64), ctypes.create_string_buffer(64)
        pair = (ctypes.c_void_p * 2)(ctypes.addressof(base), ctypes.addressof(term))
        out, size = ctypes.create_string_buffer(33), ctypes.c_size_t()
        size_ref = ctypes.byref(size)
        keep = (base, term)     # `pair` holds raw addresses: these must outlive it

        def add(tweak: bytes, _keep=keep) -> bytes | None:
            if not create(ctx, term, tweak) or not combine(ctx, total, pair, 2):
                return None
            size.value = 33
            serialize(ctx, out, size_ref, total, compressed)
            return out.raw
        return add
    return adder


BACKENDS = {"coincurve": _cffi_adder_factory, "embit": _ctypes_adder_factory}
try:
    _cffi_adder_factory()
    BACKEND = "coincurve"
except Exception:   # coincurve missing, or its private binding moved: embit's bundled library
    BACKEND = "embit"


@lru_cache(maxsize=4)
def _adder_factory(name: str):
    return BACKENDS[name]()


# -- branch-level keys and script assembly -------------------------------------------------------
@lru_cache(maxsize=4096)
def _branch_key(xpub: str, branch: int) -> tuple[bytes, bytes]:
    """(chain code, compressed public key) of XPUB/branch, derived once per process."""
    child = HDKey.from_base58(xpub).child(branch)
    return child.chain_code, child.key.sec()


def _number(n: int) -> bytes:
    """A script number push as miniscript compiles it: OP_0, OP_1..OP_16, else a minimal CScriptNum."""
    if n == 0:
        return b"\x00"
    if n <= 16:
        return bytes((0x50 + n,))
    body = n.to_bytes((n.bit_length() + 8) // 8, "little")   # a spare bit keeps the sign bit clear
    return bytes((len(body),)) + body


def _compact_size(n: int) -> bytes:
    if n < 0xFD:
        return bytes((n,))
    return b"\xfd" + n.to_bytes(2, "little") if n <= 0xFFFF else b"\xfe" + n.to_bytes(4, "little")


def _tagged(tag: str):
    """BIP-340 tagged hash with the tag's prefix hashed once."""
    prefix = hashlib.sha256(hashlib.sha256(tag.encode()).digest() * 2)

    def tagged(data: bytes) -> bytes:
        h = prefix.copy()
        h.update(data)
        return h.digest()
    return tagged


def _assembler(spec: PolicySpec, adder_factory):
    """A function from the child keys (spec.all_keys order, compressed) to the scriptPubKey (None
    when a BIP-341 tweak is invalid), or None when the policy is not one of the four shapes."""
    sha256 = hashlib.sha256
    join = b"\x21".join             # every key is a 33-byte push (0x21); x-only ones are 0x20
    n, m = len(spec.keys), spec.threshold
    if spec.kind in ("wsh-sortedmulti", "wsh-multi") and not spec.recovery_keys:
        # <M> <K1> .. <Kn> <N> CHECKMULTISIG, keys sorted for sortedmulti
        head, tail = _number(m) + b"\x21", _number(n) + b"\xae"
        if spec.kind == "wsh-sortedmulti":
            return lambda pubs: b"\x00\x20" + sha256(head + join(sorted(pubs)) + tail).digest()
        return lambda pubs: b"\x00\x20" + sha256(head + join(pubs) + tail).digest()
    if spec.kind == "wsh-recovery" and spec.recovery_keys:
        # or_d(multi(M,K..),and_v(v:R,older(N))) = <multi> IFDUP NOTIF <v:R> <N> CHECKSEQUENCEVERIFY ENDIF
        head, mid = _number(m) + b"\x21", _number(n) + b"\xae\x73\x64"
        tail = _number(spec.recovery_after) + b"\xb2\x68"
        r = len(spec.recovery_keys)
        if r == 1:      # v:pkh(R) = DUP HASH160 <hash160(R)> EQUALVERIFY CHECKSIGVERIFY
            def recovery(keys):
                return b"\x76\xa9\x14" + hash160(keys[0]) + b"\x88\xad"
        else:           # v:multi(k,R..) = <k> <R1> .. <Rr> <r> CHECKMULTISIGVERIFY
            rhead, rtail = _number(spec.recovery_threshold) + b"\x21", _number(r) + b"\xaf"

            def recovery(keys):
                return rhead + join(keys) + rtail
        return lambda pubs: b"\x00\x20" + sha256(head + join(pubs[:n]) + mid + recovery(pubs[n:]) + tail).digest()
    if spec.kind == "wpkh":
        return lambda pubs: b"\x00\x14" + hash160(pubs[0])
    if spec.kind == "tr-sortedmulti_a" and not spec.recovery_keys:
        # leaf <X1> CHECKSIG <X2> CHECKSIGADD .. <M> NUMEQUAL over sorted x-only keys; Q = NUMS + t·G
        tail = _number(m) + b"\x9c"
        nums_x = bytes.fromhex(NUMS_KEY)
        onto_nums = adder_factory(b"\x02" + nums_x)
        leaf_hash, tap_tweak = _tagged("TapLeaf"), _tagged("TapTweak")

        def taproot(pubs):
            xs = sorted(p[1:] for p in pubs)
            leaf = b"\x20" + xs[0] + b"\xac" + b"".join(b"\x20" + x + b"\xba" for x in xs[1:]) + tail
            q = onto_nums(tap_tweak(nums_x + leaf_hash(b"\xc0" + _compact_size(len(leaf)) + leaf)))
            return None if q is None else b"\x51\x20" + q[1:]
        return taproot
    return None


def _embit_script(spec: PolicySpec, branch: int, index: int) -> bytes:
    return spec.embit(branch).derive(index).script_pubkey().data


_verified: set = set()              # (spec, branch, backend) whose fast path this process checked
_verified_lock = threading.Lock()


def _fast_scripts(spec: PolicySpec, branch: int, start: int, end: int, backend: str | None = None) -> list[bytes]:
    backend = backend or BACKEND
    adder = _adder_factory(backend)
    assemble = _assembler(spec, adder)
    if assemble is None:
        desc = spec.embit(branch)
        return [desc.derive(i).script_pubkey().data for i in range(start, end + 1)]
    lanes = [(cc, sec, adder(sec)) for cc, sec in (_branch_key(k.xpub, branch) for k in spec.all_keys)]
    digest = hmac.digest
    scripts: list[bytes] = []
    append = scripts.append
    for index in range(start, end + 1):
        suffix = index.to_bytes(4, "big")
        pubs = [add(digest(cc, sec + suffix, "sha512")[:32]) for cc, sec, add in lanes]
        spk = None if None in pubs else assemble(pubs)
        append(_embit_script(spec, branch, index) if spk is None else spk)
    key = (spec, branch, backend)
    if key not in _verified:
        if scripts[0] != _embit_script(spec, branch, start):
            raise RuntimeError(f"fast derivation of {spec.label} /{branch}/{start} disagrees with embit; refusing it")
        with _verified_lock:
            _verified.add(key)
    return scripts


# -- ranges and processes -----------------------------------------------------------------------
def _check_range(start: int, end: int) -> None:
    for v in (start, end):
        if not isinstance(v, int) or isinstance(v, bool):
            raise ValueError(f"derivation indexes are integers, not {v!r}")
    if start < 0:
        raise ValueError(f"derivation range starts below 0 ({start})")
    if end < start:
        raise ValueError(f"derivation range {start}..{end} ends before it starts")
    if end > MAX_INDEX:
        raise ValueError(f"derivation index {end} is past the last non-hardened index {MAX_INDEX}")


def _check_branch(branch: int) -> None:
    if branch not in (0, 1) or isinstance(branch, bool):
        raise ValueError(f"branch is 0 (receive) or 1 (change), not {branch!r}")


def _network(name: str) -> dict:
    try:
        return NETWORK_PARAMS[name]
    except KeyError:
        raise ValueError(f"unknown network {name!r}; one of {', '.join(NETWORK_PARAMS)}") from None


def _job(task: tuple) -> list:
    """One chunk, in this process or a worker: ('scripts'|'addresses', spec, branch, backend, start, end)
    or ('descriptor', descriptor text, network, start, end)."""
    what, start, end = task[0], task[-2], task[-1]
    if what == "descriptor":
        return _embit_descriptor_addresses(Descriptor.from_string(task[1]), task[2], start, end)
    spec, branch, backend = task[1:4]
    scripts = _fast_scripts(spec, branch, start, end, backend)
    if what == "scripts":
        return scripts
    hrp = _network(spec.network)["bech32"]
    return [segwit_address(hrp, spk) for spk in scripts]


def _start_method() -> str | None:
    """fork (workers inherit the prepared keys) when this process runs one thread; forkserver when
    another thread could hold a lock across fork(); none inside a daemonic worker."""
    if multiprocessing.current_process().daemon:
        return None
    methods = multiprocessing.get_all_start_methods()
    if "fork" in methods and sys.platform != "darwin" and threading.active_count() == 1:
        return "fork"
    return "forkserver" if "forkserver" in methods else None


def _run(task: tuple, start: int, end: int, workers: int | None) -> list:
    """`task` over start..end on `workers` processes: this one and workers - 1 started ones. The
    range is cut in chunks; the workers take them from the front, this process from the back."""
    count = end - start + 1
    workers = max(1, min(workers or os.cpu_count() or 1, count))
    method = _start_method() if workers > 1 and count >= PARALLEL_THRESHOLD else None
    if method is None:
        return _job(task + (start, end))
    pieces = max(2 * workers, min(8 * workers, count // CHUNK_MIN))
    size = -(-count // pieces)
    chunks = [task + (s, min(s + size - 1, end)) for s in range(start, end + 1, size)]
    results: list = [None] * len(chunks)
    with ProcessPoolExecutor(workers - 1, mp_context=multiprocessing.get_context(method)) as pool:
        futures = [pool.submit(_job, c) for c in chunks]
        for i in reversed(range(len(chunks))):
            if not futures[i].cancel():     # a worker has this chunk already, and every one before it
                break
            results[i] = _job(chunks[i])
        for i, future in enumerate(futures):
            if results[i] is None:
                results[i] = future.result()
    return [item for part in results for item in part]


# -- the API ------------------------------------------------------------------------------------
def derive_scripts(spec: PolicySpec, branch: int, start: int, end: int, *, workers: int | None = None) -> list[bytes]:
    """scriptPubKeys of indexes start..end (inclusive) on branch 0 (receive) or 1 (change), identical
    to `spec.embit(branch).derive(i).script_pubkey().data`. workers: processes (default: every core)."""
    _check_branch(branch)
    _check_range(start, end)
    return _run(("scripts", spec, branch, BACKEND), start, end, workers)


def derive_addresses(spec: PolicySpec, branch: int, start: int, end: int, *, workers: int | None = None) -> list[str]:
    """Addresses of indexes start..end (inclusive) on branch 0 (receive) or 1 (change), in the policy's network."""
    _check_branch(branch)
    _check_range(start, end)
    _network(spec.network)
    return _run(("addresses", spec, branch, BACKEND), start, end, workers)


def derive_descriptor_addresses(descriptor: str, start: int = 0, end: int = 0, *, network: str = "regtest",
                                branch: int | None = None, workers: int | None = None) -> list:
    """What Bitcoin Core 29's `deriveaddresses DESCRIPTOR [start,end]` returns: the addresses of
    start..end; for a multipath descriptor (`<0;1>`, BIP-389) one list per path, in path order (with
    `branch`, that path's list alone: 0 receive, 1 change); for a descriptor without `*` a list of its one
    address (the range is then not used). The checksum is checked when present (Core requires it).
    Policies of the four shapes take the fast path, any other descriptor embit's derivation. Raises
    ValueError where Core answers an error, and for a branch the descriptor does not have."""
    _check_range(start, end)
    if end - start + 1 > MAX_DESCRIPTOR_RANGE:
        raise ValueError(f"range of {end - start + 1:,} addresses is too large (at most {MAX_DESCRIPTOR_RANGE:,})")
    _network(network)
    body, sep, given = descriptor.strip().partition("#")
    if sep and given != _descriptor_checksum(body):
        raise ValueError(f"descriptor checksum {given!r} does not match the computed {_descriptor_checksum(body)!r}")
    try:
        desc = Descriptor.from_string(body)
    except Exception as e:
        raise ValueError(f"invalid descriptor: {e}") from None
    paths = [desc.branch(p) for p in range(desc.num_branches)] if desc.num_branches > 1 else [desc]
    if branch is not None:
        if isinstance(branch, bool) or not isinstance(branch, int):
            raise ValueError(f"branch {branch!r} is not a path number")
        if len(paths) == 1:
            raise ValueError("branch picks one path of a multipath descriptor (<0;1>), and this descriptor has "
                             "one path: leave branch out")
        if not 0 <= branch < len(paths):
            raise ValueError(f"branch {branch} is not a path of this descriptor: it has {len(paths)} "
                             f"(0 to {len(paths) - 1}; in <0;1>, 0 is receive and 1 change)")
        paths = [paths[branch]]
    policy = _as_policy(body, network)
    result = []
    for path in paths:
        if not path.is_wildcard:
            result.append(_embit_descriptor_addresses(path, network, None, None))
            continue
        branch = _policy_branch(policy, path)
        if branch is not None:
            result.append(_run(("addresses", policy, branch, BACKEND), start, end, workers))
        else:
            result.append(_run(("descriptor", str(path), network), start, end, workers))
    return result if len(result) > 1 else result[0]


def _as_policy(body: str, network: str) -> PolicySpec | None:
    try:
        return parse_policy(body, network=network)
    except (PolicyError, ValueError):
        return None


def _policy_branch(policy: PolicySpec | None, path: Descriptor) -> int | None:
    """The branch of `policy` whose descriptor is exactly `path` (same keys, order and derivations)."""
    if policy is None:
        return None
    text = str(path)
    for branch in (0, 1):
        if str(policy.embit(branch)) == text:
            return branch
    return None


def _embit_descriptor_addresses(desc: Descriptor, network: str, start: int | None, end: int | None) -> list[str]:
    net = _network(network)
    out = []
    for index in ([None] if start is None else range(start, end + 1)):
        try:
            # derive() applies every key's fixed path too (script_pubkey() alone would skip it)
            spk = desc.derive(0 if index is None else index).script_pubkey()
        except Exception as e:
            raise ValueError(f"cannot derive the script: {e}") from None
        try:
            address = spk.address(net)
        except Exception:
            address = None
        if not address:
            raise ValueError("descriptor does not have a corresponding address")
        out.append(address)
    return out


# -- bech32 / bech32m (BIP-173 / BIP-350) -------------------------------------------------------
# The checksum is affine over GF(2) in the data: polymod(hrp, version, program) =
# polymod(hrp, version, zeros) ^ XOR over program bytes j of T[j][byte]. The 5-bit symbols are
# spread one per byte with a few big-integer masks and shifts, then mapped by bytes.translate.
_BECH32_CHARSET = b"qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_TO_CHARSET = bytes.maketrans(bytes(range(32)), _BECH32_CHARSET)
_GEN = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)
_BECH32M_CONST = 0x2BC830A3


def _polymod(values, chk: int = 1) -> int:
    for v in values:
        top = chk >> 25
        chk = ((chk & 0x1FFFFFF) << 5) ^ v
        for i in range(5):
            if (top >> i) & 1:
                chk ^= _GEN[i]
    return chk


def _groups(program: bytes) -> list[int]:
    bits = len(program) * 8
    pad = -bits % 5
    number = int.from_bytes(program, "big") << pad
    count = (bits + pad) // 5
    return [(number >> (5 * (count - 1 - i))) & 31 for i in range(count)]


@lru_cache(maxsize=64)
def _byte_tables(length: int) -> tuple[list[int], ...]:
    """T[j][b]: the checksum contribution of program byte j having value b (all else zero)."""
    tables = []
    for j in range(length):
        bit_terms = []
        for bit in range(8):
            program = bytearray(length)
            program[j] = 1 << bit
            bit_terms.append(_polymod([0] + _groups(bytes(program)) + [0] * 6, 0))
        table = [0] * 256
        for b in range(1, 256):
            low = b & -b
            table[b] = table[b ^ low] ^ bit_terms[low.bit_length() - 1]
        tables.append(table)
    return tuple(tables)


@lru_cache(maxsize=256)
def _base_checksum(hrp: str, version: int, length: int) -> int:
    expanded = [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp]
    const = 1 if version == 0 else _BECH32M_CONST
    return _polymod(expanded + [version] + [0] * len(_groups(bytes(length))) + [0] * 6) ^ const


@lru_cache(maxsize=16)
def _spread_steps(slots: int) -> tuple[tuple[int, int, int], ...]:
    """Masks and shifts moving `slots` (a power of two) 5-bit groups to one group per byte."""
    steps, size = [], slots
    while size > 1:
        half = size // 2
        low = high = 0
        for block in range(slots // size):
            low |= ((1 << (5 * half)) - 1) << (8 * size * block)
            high |= ((1 << (5 * half)) - 1) << (5 * half + 8 * size * block)
        steps.append((low, high, 3 * half))
        size = half
    return tuple(steps)


def segwit_address(hrp: str, script_pubkey: bytes) -> str:
    """The bech32 (v0) or bech32m (v1+) address of a witness-program scriptPubKey."""
    if len(script_pubkey) < 4 or script_pubkey[1] != len(script_pubkey) - 2 or \
            not (script_pubkey[0] == 0 or 0x51 <= script_pubkey[0] <= 0x60):
        raise ValueError("not a witness program scriptPubKey")
    version = 0 if script_pubkey[0] == 0 else script_pubkey[0] - 0x50
    program = script_pubkey[2:]
    length = len(program)
    check = reduce(xor, map(list.__getitem__, _byte_tables(length), program), _base_checksum(hrp, version, length))
    pad = -length * 8 % 5
    symbols = 1 + (length * 8 + pad) // 5 + 6
    slots = 1 << (symbols - 1).bit_length()
    number = ((((version << (length * 8)) | int.from_bytes(program, "big")) << pad) << 30 | check) << (5 * (slots - symbols))
    for low, high, shift in _spread_steps(slots):
        number = (number & low) | ((number & high) << shift)
    return hrp + "1" + number.to_bytes(slots, "big")[:symbols].translate(_TO_CHARSET).decode()
