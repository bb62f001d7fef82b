"""Key import and policy construction: every rule a coordinator enforces before coins arrive."""
from __future__ import annotations

import pytest
from embit import bip32
from embit.networks import NETWORKS

from custody.bitcoin.keys import KeyImportError, parse_key
from custody.bitcoin.policies import build_policy, KINDS, parse_policy, PolicyError

from .conftest import hd_keys

TEST = NETWORKS["test"]


def account(seed: int = 1):
    root = bip32.HDKey.from_seed(bytes([seed]) * 32, version=NETWORKS["regtest"]["xprv"])
    return root, root.derive("m/48h/1h/0h/2h").to_public()


def test_canonical_form_from_every_encoding():
    root, acct = account()
    fp = root.my_fingerprint.hex()
    canonical = parse_key(f"[{fp}/48h/1h/0h/2h]{acct.to_base58(TEST['xpub'])}")
    assert str(canonical) == f"[{fp}/48h/1h/0h/2h]{acct.to_base58(TEST['xpub'])}"
    for version in ("xpub", "Zpub", "zpub", "ypub", "Ypub"):         # tpub, Vpub, vpub, upub, Upub
        text = acct.to_base58(TEST[version])
        assert parse_key(text, fingerprint=fp, path="m/48'/1'/0'/2'") == canonical
    assert parse_key(f"[{fp.upper()}/48'/1'/0'/2']{acct.to_base58(TEST['Zpub'])}") == canonical


@pytest.mark.parametrize("mutate, message", [
    (lambda fp, k, r: f"[{fp}/48h/1h/0h/2h]{k.to_base58(NETWORKS['main']['xpub'])}", "mainnet"),
    (lambda fp, k, r: f"[{fp}/48h/1h/0h]{k.to_base58(TEST['xpub'])}", "depth"),
    (lambda fp, k, r: f"[{fp}/48h/1h/0h/3h]{k.to_base58(TEST['xpub'])}", "child number"),
    (lambda fp, k, r: f"[{fp}/48h/1h/0h/2h]{k.to_base58(TEST['xpub'])[:-1]}1", "checksum"),
    (lambda fp, k, r: f"[{fp}/48h/1h/0h/2h]{r.derive('m/48h/1h/0h/2h').to_base58()}", "private key"),
    (lambda fp, k, r: k.to_base58(TEST["xpub"]), "origin"),
    (lambda fp, k, r: f"[{fp}/1h]{r.derive('m/1h').to_public().to_base58(TEST['xpub'])}".replace(fp, "00000000", 1),
     "parent fingerprint"),
])
def test_bad_keys_are_refused_with_a_reason(mutate, message):
    root, acct = account()
    with pytest.raises(KeyImportError, match=message):
        parse_key(mutate(root.my_fingerprint.hex(), acct, root), network="regtest")


def test_mainnet_policy_refuses_test_keys():
    with pytest.raises(PolicyError, match="key is for testnet.*policy is on main"):
        build_policy("wsh-sortedmulti", 2, hd_keys(3), network="main")


@pytest.mark.parametrize("kind", KINDS)
def test_each_policy_kind_round_trips_through_its_descriptor(kind):
    keys = hd_keys(4)
    spec = build_policy(kind, 1, keys[:1]) if kind == "wpkh" else build_policy(
        kind, 2, keys[:3], recovery_keys=[keys[3]] if kind == "wsh-recovery" else [], recovery_after=4_320)
    descriptor = spec.descriptor()
    assert "<0;1>/*" in descriptor and "#" in descriptor
    assert parse_policy(descriptor) == spec
    assert parse_policy(descriptor.split("#")[0]) == spec
    assert spec.embit(0).derive(0).script_pubkey().data != spec.embit(1).derive(0).script_pubkey().data


def test_descriptor_shapes():
    keys = hd_keys(4)
    assert build_policy("wpkh", 1, keys[:1]).descriptor().startswith("wpkh([")
    with pytest.raises(PolicyError, match="exactly one key"):
        build_policy("wpkh", 1, keys[:2])
    assert build_policy("wsh-sortedmulti", 2, keys[:3]).descriptor().startswith("wsh(sortedmulti(2,[")
    assert build_policy("tr-sortedmulti_a", 2, keys[:3]).descriptor().startswith(
        "tr(50929b74c1a04954b78b4b6035e97a5e078a5a0f28ec96d547bfee9ace803ac0,sortedmulti_a(2,")
    recovery = build_policy("wsh-recovery", 2, keys[:3], recovery_keys=keys[3:], recovery_after=144).descriptor()
    assert "or_d(multi(2," in recovery and "and_v(v:pkh(" in recovery and "older(144)" in recovery


@pytest.mark.parametrize("args, message", [
    (("wsh-sortedmulti", 0, 3), "threshold"),
    (("wsh-sortedmulti", 4, 3), "threshold"),
    (("wsh-multi", 1, 21), "at most 20"),
    (("wsh-sortedmulti", 1, 0), "at least one key"),
    (("nonsense", 1, 2), "unknown policy kind"),
])
def test_policy_limits(args, message):
    kind, m, n = args
    with pytest.raises(PolicyError, match=message):
        build_policy(kind, m, hd_keys(n) if n else [])


def test_repeated_key_and_shared_device_are_refused():
    keys = hd_keys(2)
    with pytest.raises(PolicyError, match="repeats key 1"):
        build_policy("wsh-sortedmulti", 2, [keys[0], keys[1], keys[0]])
    import hashlib
    root = bip32.HDKey.from_seed(hashlib.sha256(b"test device 1").digest(), version=NETWORKS["regtest"]["xprv"])
    other_account = f"[{root.my_fingerprint.hex()}/48h/1h/1h/2h]{root.derive('m/48h/1h/1h/2h').to_public().to_base58()}"
    with pytest.raises(PolicyError, match="same master fingerprint"):
        build_policy("wsh-sortedmulti", 2, [keys[0], keys[1], other_account])


def test_recovery_rules():
    keys = hd_keys(4)
    with pytest.raises(PolicyError, match="recovery key"):
        build_policy("wsh-recovery", 2, keys[:3], recovery_after=144)
    with pytest.raises(PolicyError, match="delay"):
        build_policy("wsh-recovery", 2, keys[:3], recovery_keys=keys[3:], recovery_after=0)
    with pytest.raises(PolicyError, match="no recovery path"):
        build_policy("wsh-sortedmulti", 2, keys[:3], recovery_keys=keys[3:])


def test_bad_descriptor_checksum_is_refused():
    descriptor = build_policy("wsh-sortedmulti", 2, hd_keys(3)).descriptor()
    body, checksum = descriptor.split("#")
    with pytest.raises(PolicyError, match="checksum"):
        parse_policy(f"{body}#{'q' * 8 if checksum != 'q' * 8 else 'p' * 8}")
