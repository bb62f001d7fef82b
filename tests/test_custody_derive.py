"""Fast derivation gives exactly what embit and the node's deriveaddresses give."""
from __future__ import annotations

import pytest
from embit.networks import NETWORKS

from custody.bitcoin import derive
from custody.bitcoin.derive import derive_addresses, derive_descriptor_addresses, derive_scripts, segwit_address
from custody.bitcoin.policies import build_policy, KINDS

from .conftest import hd_keys

REGTEST = NETWORKS["regtest"]


def spec_of(kind: str):
    keys = hd_keys(4, seed_base=500)
    if kind == "wpkh":
        return build_policy(kind, 1, keys[:1])
    return build_policy(kind, 2, keys[:3], recovery_keys=[keys[3]] if kind == "wsh-recovery" else [],
                        recovery_after=144)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("branch", [0, 1])
def test_same_scripts_as_embit(kind, branch):
    spec = spec_of(kind)
    reference = spec.embit(branch)
    ours = derive_scripts(spec, branch, 5, 14)
    assert ours == [reference.derive(i).script_pubkey().data for i in range(5, 15)]
    assert derive_addresses(spec, branch, 5, 6) == [reference.derive(i).script_pubkey().address(REGTEST)
                                                    for i in (5, 6)]


def test_parallel_path_matches_single_process(monkeypatch):
    spec = spec_of("wsh-sortedmulti")
    monkeypatch.setattr(derive, "PARALLEL_THRESHOLD", 10)
    parallel = derive_scripts(spec, 0, 0, 99, workers=2)
    assert parallel == derive_scripts(spec, 0, 0, 99, workers=1)
    assert len(parallel) == 100 and len(set(parallel)) == 100


@pytest.mark.parametrize("start, end", [(-1, 5), (5, 4), (0, 1 << 31)])
def test_bad_ranges(start, end):
    with pytest.raises(ValueError):
        derive_scripts(spec_of("wsh-sortedmulti"), 0, start, end)


def test_bech32_and_bech32m_encoding():
    from embit.script import Script
    for spk in (b"\x00\x14" + bytes(20), b"\x00\x20" + bytes(range(32)), b"\x51\x20" + bytes(range(32, 64))):
        for net in ("main", "test", "regtest"):
            assert segwit_address(NETWORKS[net]["bech32"], spk) == Script(spk).address(NETWORKS[net])


def test_same_addresses_as_the_nodes_deriveaddresses(rpc):
    spec = spec_of("wsh-sortedmulti")
    single = rpc.getdescriptorinfo(spec.descriptor(1).split("#")[0])["descriptor"]
    assert derive_descriptor_addresses(single, 0, 9) == rpc.deriveaddresses(single, [0, 9])
    multipath = spec.descriptor()
    assert derive_descriptor_addresses(multipath, 3, 5) == rpc.deriveaddresses(multipath, [3, 5])
    w = "wpkh(" + hd_keys(1, seed_base=600)[0] + "/0/*)"
    w = rpc.getdescriptorinfo(w)["descriptor"]
    assert derive_descriptor_addresses(w, 0, 4) == rpc.deriveaddresses(w, [0, 4])
