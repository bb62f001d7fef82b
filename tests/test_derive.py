"""custody.bitcoin.derive gives exactly embit's scripts and addresses, and the node's deriveaddresses, on the
fast path, on both libsecp256k1 bindings, in one process and across processes."""
from __future__ import annotations

import os
import threading

import pytest
from embit import bip32
from embit.descriptor import Descriptor
from embit.networks import NETWORKS
from embit.script import Script

from custody.bitcoin import derive
from custody.bitcoin.derive import (MAX_INDEX, derive_addresses, derive_descriptor_addresses, derive_scripts,
                            segwit_address)
from custody.bitcoin.policies import add_checksum, build_policy, KINDS

REGTEST = NETWORKS["regtest"]


def account_keys(count: int = 4) -> list[str]:
    """"[fp/48h/1h/0h/2h]tpub…" from the fixed seeds bytes([i]) * 32, i = 1..count."""
    keys = []
    for i in range(1, count + 1):
        root = bip32.HDKey.from_seed(bytes([i]) * 32, version=REGTEST["xprv"])
        account = root.derive("m/48h/1h/0h/2h").to_public()
        keys.append(f"[{root.my_fingerprint.hex()}/48h/1h/0h/2h]{account.to_base58()}")
    return keys


KEYS = account_keys()


def policy(kind: str, network: str = "regtest"):
    if kind == "wpkh":
        return build_policy(kind, 1, KEYS[:1], network=network)
    return build_policy(kind, 2, KEYS[:3], recovery_keys=[KEYS[3]] if kind == "wsh-recovery" else [],
                        recovery_after=144, network=network)


def embit_scripts(spec, branch, indexes):
    desc = spec.embit(branch)
    return [desc.derive(i).script_pubkey().data for i in indexes]


def embit_addresses(spec, branch, indexes, network=REGTEST):
    desc = spec.embit(branch)
    return [desc.derive(i).script_pubkey().address(network) for i in indexes]


@pytest.fixture
def count_pools(monkeypatch):
    """How many times derivation went to a process pool."""
    calls = []
    original = derive._start_method

    def spy():
        method = original()
        calls.append(method)
        return method
    monkeypatch.setattr(derive, "_start_method", spy)
    return calls


# -- the same as embit --------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("branch", [0, 1])
@pytest.mark.parametrize("start, end", [(0, 0), (0, 24), (1000, 1011), (MAX_INDEX - 3, MAX_INDEX)])
def test_same_scripts_and_addresses_as_embit(kind, branch, start, end):
    spec = policy(kind)
    indexes = range(start, end + 1)
    assert derive_scripts(spec, branch, start, end) == embit_scripts(spec, branch, indexes)
    assert derive_addresses(spec, branch, start, end) == embit_addresses(spec, branch, indexes)


@pytest.mark.parametrize("kind", KINDS)
def test_embits_ctypes_binding_gives_the_same(kind, monkeypatch):
    spec = policy(kind)
    monkeypatch.setattr(derive, "BACKEND", "embit")
    for branch in (0, 1):
        assert derive_scripts(spec, branch, 7, 18) == embit_scripts(spec, branch, range(7, 19))


def test_more_keys_and_a_recovery_quorum():
    keys = account_keys(12)
    for spec in (build_policy("wsh-sortedmulti", 11, keys[:11]),       # OP_11 / a 2-byte push for 17+
                 build_policy("tr-sortedmulti_a", 9, keys[:11]),
                 build_policy("wsh-recovery", 3, keys[:5], recovery_keys=keys[5:8], recovery_threshold=2,
                              recovery_after=65535)):
        assert derive_scripts(spec, 1, 40, 45) == embit_scripts(spec, 1, range(40, 46))


def test_other_networks_use_their_own_addresses():
    spec = policy("wsh-sortedmulti", network="testnet4")
    assert derive_addresses(spec, 0, 0, 2) == embit_addresses(spec, 0, range(3), NETWORKS["test"])
    assert derive_addresses(spec, 0, 0, 0)[0].startswith("tb1q")


# -- across the parallel/in-process threshold -----------------------------------------------------
def _expected_method() -> str:
    """fork when the test process runs one thread; earlier tests in the same run may leave idle worker
    threads (anyio's thread pool, used by the web service's tests), and then forkserver is right."""
    return "fork" if threading.active_count() == 1 else "forkserver"


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("branch", [0, 1])
def test_parallel_path_is_embits_derivation(kind, branch, monkeypatch, count_pools):
    spec = policy(kind)
    monkeypatch.setattr(derive, "PARALLEL_THRESHOLD", 20)
    monkeypatch.setattr(derive, "CHUNK_MIN", 4)
    reference = embit_scripts(spec, branch, range(100, 161))
    for end, workers in ((118, 2), (119, 2), (120, 2), (160, 2), (160, 3)):   # 19, 20, 21 and 61 indexes
        assert derive_scripts(spec, branch, 100, end, workers=workers) == reference[:end - 99]
    assert derive_addresses(spec, branch, 100, 160, workers=2) == embit_addresses(spec, branch, range(100, 161))
    assert count_pools == [_expected_method()] * 5      # 19 indexes stayed in this process


@pytest.mark.parametrize("size", [derive.PARALLEL_THRESHOLD - 1, derive.PARALLEL_THRESHOLD,
                                  derive.PARALLEL_THRESHOLD + 1])
def test_at_the_real_threshold(size, count_pools):
    spec = policy("wsh-sortedmulti")
    start = 3_000
    end = start + size - 1
    parallel = derive_addresses(spec, 0, start, end, workers=2)
    in_process = derive_addresses(spec, 0, start, end, workers=1)
    assert parallel == in_process and len(parallel) == size and len(set(parallel)) == size
    assert count_pools == ([] if size < derive.PARALLEL_THRESHOLD else [_expected_method()])
    sample = sorted({0, 1, size // 2, size - 2, size - 1} | set(range(0, size, 97)))
    assert [parallel[i] for i in sample] == embit_addresses(spec, 0, [start + i for i in sample])


def test_forkserver_when_other_threads_run(monkeypatch, count_pools):
    """fork() with another thread alive can inherit a lock that thread holds: use forkserver."""
    spec = policy("wsh-recovery")
    monkeypatch.setattr(derive, "PARALLEL_THRESHOLD", 20)
    stop = threading.Event()
    other = threading.Thread(target=stop.wait)
    other.start()
    try:
        assert derive_scripts(spec, 1, 0, 39, workers=2) == embit_scripts(spec, 1, range(40))
    finally:
        stop.set()
        other.join()
    assert count_pools == ["forkserver"]


def test_a_fast_path_that_disagrees_with_embit_is_refused(monkeypatch):
    spec = policy("wsh-multi")
    monkeypatch.setattr(derive, "_verified", set())
    monkeypatch.setattr(derive, "_assembler", lambda spec, adder: (lambda pubs: b"\x00\x20" + bytes(32)))
    with pytest.raises(RuntimeError, match="disagrees with embit"):
        derive_scripts(spec, 0, 0, 3)


# -- bad input ----------------------------------------------------------------------------------
@pytest.mark.parametrize("start, end", [(-1, 5), (5, 4), (0, MAX_INDEX + 1), (-3, -1), (0.5, 2), (0, True)])
def test_bad_ranges(start, end):
    spec = policy("wsh-sortedmulti")
    with pytest.raises(ValueError):
        derive_scripts(spec, 0, start, end)
    with pytest.raises(ValueError):
        derive_addresses(spec, 1, start, end)
    with pytest.raises(ValueError):
        derive_descriptor_addresses(spec.descriptor(), start, end)


@pytest.mark.parametrize("branch", [2, -1, None])
def test_bad_branch(branch):
    with pytest.raises(ValueError):
        derive_scripts(policy("wsh-sortedmulti"), branch, 0, 1)
    with pytest.raises(ValueError):
        derive_addresses(policy("wsh-sortedmulti"), branch, 0, 1)


def test_bad_descriptors():
    spec = policy("wsh-sortedmulti")
    body = spec.descriptor().split("#")[0]
    with pytest.raises(ValueError, match="checksum"):
        derive_descriptor_addresses(body + "#aaaaaaaa", 0, 1)
    with pytest.raises(ValueError, match="too large"):
        derive_descriptor_addresses(spec.descriptor(), 0, 1_000_000)
    with pytest.raises(ValueError):
        derive_descriptor_addresses("wsh(sortedmulti(2,", 0, 1)
    with pytest.raises(ValueError):
        derive_descriptor_addresses(spec.descriptor(), 0, 1, network="nonet")


# -- the node's deriveaddresses -----------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_same_as_the_nodes_deriveaddresses(rpc, kind):
    spec = policy(kind)
    for branch in (0, 1):
        single = spec.descriptor(branch)
        assert derive_descriptor_addresses(single, 0, 9) == rpc.deriveaddresses(single, [0, 9])
    multipath = spec.descriptor()           # Core 29: one list per path
    ours = derive_descriptor_addresses(multipath, 3, 7)
    assert ours == rpc.deriveaddresses(multipath, [3, 7])
    assert len(ours) == 2 and ours[0] == embit_addresses(spec, 0, range(3, 8))


def test_same_as_the_node_across_the_threshold(rpc):
    spec = policy("wsh-sortedmulti")
    end = derive.PARALLEL_THRESHOLD + 50
    ours = derive_descriptor_addresses(spec.descriptor(), 0, end, workers=2)
    assert ours == rpc.deriveaddresses(spec.descriptor(), [0, end])


def test_other_descriptors_as_the_node(rpc):
    k = KEYS
    bodies = [
        f"wsh(sortedmulti(2,{k[0]}/0/*,{k[1]}/1/*,{k[2]}/0/*))",     # mixed branches: not one policy branch
        f"wsh(multi(2,{k[2]}/<0;1>/*,{k[0]}/<0;1>/*,{k[1]}/<0;1>/*))",  # another key order
        f"wsh(sortedmulti(2,{k[0]}/<1;0>/*,{k[1]}/<1;0>/*,{k[2]}/<1;0>/*))",   # paths in the other order
        f"wpkh({k[0]}/<0;1>/*)",
        f"tr({k[1]}/0/*)",
        f"sh(wsh(sortedmulti(2,{k[0]}/0/*,{k[1]}/0/*,{k[2]}/0/*)))",
    ]
    for body in bodies:
        descriptor = add_checksum(body)
        assert derive_descriptor_addresses(descriptor, 5, 8) == rpc.deriveaddresses(descriptor, [5, 8]), body
    fixed = add_checksum(f"wsh(sortedmulti(2,{k[0]}/0/7,{k[1]}/0/7,{k[2]}/0/7))")
    assert derive_descriptor_addresses(fixed) == rpc.deriveaddresses(fixed)       # one address
    assert derive_descriptor_addresses(fixed)[0] == embit_addresses(policy("wsh-sortedmulti"), 0, [7])[0]


def test_descriptor_without_address_is_refused(rpc):
    from custody.chain.node_client import RPCError
    descriptor = add_checksum(f"pk({KEYS[0]}/0/*)")
    with pytest.raises(RPCError):
        rpc.deriveaddresses(descriptor, [0, 1])
    with pytest.raises(ValueError):         # embit does not parse a top-level pk(): refused either way
        derive_descriptor_addresses(descriptor, 0, 1)


# -- bech32 / bech32m ---------------------------------------------------------------------------
@pytest.mark.parametrize("address, spk", [   # BIP-173 and BIP-350 valid vectors (lower case)
    ("bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4", "0014751e76e8199196d454941c45d1b3a323f1433bd6"),
    ("tb1qrp33g0q5c5txsp9arysrx4k6zdkfs4nce4xj0gdcccefvpysxf3q0sl5k7",
     "00201863143c14c5166804bd19203356da136c985678cd4d27a1b8c6329604903262"),
    ("bc1pw508d6qejxtdg4y5r3zarvary0c5xw7kw508d6qejxtdg4y5r3zarvary0c5xw7kt5nd6y",
     "5128751e76e8199196d454941c45d1b3a323f1433bd6751e76e8199196d454941c45d1b3a323f1433bd6"),
    ("bc1sw50qgdz25j", "6002751e"),
    ("bc1zw508d6qejxtdg4y5r3zarvaryvaxxpcs", "5210751e76e8199196d454941c45d1b3a323"),
    ("tb1pqqqqp399et2xygdj5xreqhjjvcmzhxw4aywxecjdzew6hylgvsesf3hn0c",
     "5120000000c4a5cad46221b2a187905e5266362b99d5e91c6ce24d165dab93e86433"),
])
def test_bech32_vectors(address, spk):
    assert segwit_address(address[:2], bytes.fromhex(spk)) == address


def test_bech32_matches_embit_on_random_programs():
    for _ in range(200):
        for spk in (b"\x00\x14" + os.urandom(20), b"\x00\x20" + os.urandom(32), b"\x51\x20" + os.urandom(32)):
            for net in ("main", "test", "regtest", "signet"):
                assert segwit_address(NETWORKS[net]["bech32"], spk) == Script(spk).address(NETWORKS[net])
    with pytest.raises(ValueError):
        segwit_address("bc", bytes.fromhex("76a914" + "00" * 20 + "88ac"))


def test_descriptor_parsing_is_embits():
    # the generic path re-parses each path's text in a worker: it must round-trip
    spec = policy("tr-sortedmulti_a")
    desc = Descriptor.from_string(spec.descriptor().split("#")[0])
    for p in range(desc.num_branches):
        assert str(Descriptor.from_string(str(desc.branch(p)))) == str(desc.branch(p))
