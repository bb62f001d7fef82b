"""Descriptor handling of the embedded node: BIP-380 checksums, ranges, multipath, scan results."""
from __future__ import annotations

import pytest
from embit import bip32
from embit.descriptor import Descriptor
from embit.networks import NETWORKS

from regtest import descriptors as D
from regtest.testwallet import TestWallet

from .conftest import mine_coins

REGTEST = NETWORKS["regtest"]


def tpubs(n: int = 3) -> list[str]:
    root = bip32.HDKey.from_seed(bytes(range(32)), version=REGTEST["xprv"])
    fp = root.my_fingerprint.hex()
    return [f"[{fp}/48h/1h/{i}h/2h]" + root.derive(f"m/48h/1h/{i}h/2h").to_public().to_base58(REGTEST["xpub"])
            for i in range(n)]


@pytest.mark.parametrize("desc, checksum", [
    ("raw(deadbeef)", "89f8spxm"),                                                       # BIP-380
    ("pkh(02c6047f9441ed7d6d3045406e95c07cd85c778e4b8cef3ca7abac09b95c709ee5)", "8fhd9pwu"),
])
def test_bip380_checksums(desc, checksum):
    assert D.descriptor_checksum(desc) == checksum
    assert D.check_and_strip_checksum(f"{desc}#{checksum}") == desc


def test_bad_checksums_are_refused():
    with pytest.raises(D.DescriptorError, match="does not match computed checksum"):
        D.check_and_strip_checksum("raw(deadbeef)#89f8spxn")
    with pytest.raises(D.DescriptorError, match="8 character"):
        D.check_and_strip_checksum("raw(deadbeef)#89f8")
    with pytest.raises(D.DescriptorError, match="Missing checksum"):
        D.check_and_strip_checksum("raw(deadbeef)", require=True)


def test_ranges():
    xp = tpubs(1)[0]
    assert D.parse_scan_objects([f"wpkh({xp}/0/*)"])[0].range == (0, 999)
    assert D.parse_scan_objects([{"desc": f"wpkh({xp}/0/*)", "range": 5}])[0].range == (0, 5)
    assert D.parse_scan_objects([{"desc": f"wpkh({xp}/0/*)", "range": [3, 7]}])[0].range == (3, 7)
    assert D.parse_scan_objects([f"wpkh({xp}/0/1)"])[0].range is None
    for bad in (-1, [5, 3], [0, 2_000_000]):
        with pytest.raises(D.DescriptorError):
            D.parse_scan_objects([{"desc": f"wpkh({xp}/0/*)", "range": bad}])


def test_multipath_sortedmulti_matches_embit_on_both_branches():
    keys = tpubs()
    body = "wsh(sortedmulti(2,{}/<0;1>/*,{}/<0;1>/*,{}/<0;1>/*))".format(*keys)
    obj = D.parse_scan_objects([{"desc": body, "range": [0, 9]}])[0]
    scripts = D.expand(obj)
    assert len(scripts) == 20
    reference = Descriptor.from_string(body)
    for branch in (0, 1):
        for index in (0, 9):
            spk = reference.derive(index, branch_index=branch).script_pubkey().data
            assert spk in scripts
            assert f"/{branch}/{index}]" in D.describe(scripts[spk])     # reported with its full origin
    assert all(D.describe(m).startswith("wsh(sortedmulti(2,[") for m in scripts.values())


def test_addresses_and_raw_scripts():
    w = TestWallet("descriptors")
    for kind in ("wpkh", "tr", "pkh"):
        obj = D.parse_scan_objects([f"addr({w.address(kind)})"])[0]
        assert list(D.expand(obj)) == [getattr(w, kind)]
    assert list(D.expand(D.parse_scan_objects([f"raw({w.wpkh.hex()})"])[0])) == [w.wpkh]
    with pytest.raises(D.DescriptorError):
        D.parse_scan_objects(["addr(bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4)"])   # mainnet
    with pytest.raises(D.DescriptorError):
        D.parse_scan_objects(["raw(xyz)"])


def test_mainnet_keys_are_refused():
    root = bip32.HDKey.from_seed(bytes(32))
    with pytest.raises(D.DescriptorError, match="network"):
        D.parse_scan_objects([f"wpkh({root.to_public().to_base58()}/0/*)"])


def test_inferred_descriptors():
    w = TestWallet("infer")
    assert D.infer_descriptor(w.wpkh) == D.add_checksum(f"addr({w.address()})")
    assert D.infer_descriptor(b"\x6a\x01\x01").startswith("raw(6a0101)#")


def test_scantxoutset_over_a_ranged_multisig(rpc, other_address):
    keys = tpubs()
    body = "wsh(sortedmulti(2,{}/<0;1>/*,{}/<0;1>/*,{}/<0;1>/*))".format(*keys)
    reference = Descriptor.from_string(body)
    change_7 = reference.derive(7, branch_index=1).script_pubkey().address(REGTEST)
    receive_3 = reference.derive(3, branch_index=0).script_pubkey().address(REGTEST)
    rpc.generatetoaddress(1, change_7)
    rpc.generatetoaddress(1, receive_3)
    result = rpc.scantxoutset("start", [{"desc": D.add_checksum(body), "range": 10}])
    assert len(result["unspents"]) == 2
    assert sorted(u["desc"].split("]")[0][-4:] for u in result["unspents"]) == ["/0/3", "/1/7"]
    narrow = rpc.scantxoutset("start", [{"desc": body, "range": [0, 5]}])
    assert len(narrow["unspents"]) == 1
