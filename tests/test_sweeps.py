"""Sweeping the fleet's payout wallet into custody on the embedded node: batches, fee awareness, coinbase
maturity, the custody-only destination, and the sweep tracked to confirmation like any spend."""
from __future__ import annotations

import hashlib
import json

import pytest
from embit import bip32
from embit.networks import NETWORKS
from embit.psbt import PSBT
from sqlalchemy import select

from custody.bitcoin.policies import build_policy
from custody.errors import CustodyError
from custody.eventlog.models import EventLogEntry
from custody.ledger import coins as ledger, registry
from custody.ledger.sync import Syncer
from custody.mining import sweeps
from custody.mining.models import Sweep
from custody.spending import spends
from custody.store.db import open_database
from regtest.testwallet import TestWallet

from .conftest import hd_keys, mine_coins

FLEET_SEED = 91
MINER = TestWallet("sweep miner").address()


def fleet_root() -> bip32.HDKey:
    return bip32.HDKey.from_seed(hashlib.sha256(f"test device {FLEET_SEED}".encode()).digest(),
                                 version=NETWORKS["regtest"]["xprv"])


@pytest.fixture(scope="module")
def world(rpc, wallet, tmp_path_factory):
    """A fleet wallet paid 24 pool payouts of 60,000-83,000 sat, 4 tiny ones of 500 sat and one coinbase;
    a 2-of-3 custody policy to sweep into."""
    sessions = open_database(f"sqlite:///{tmp_path_factory.mktemp('sweeps')}/db.sqlite")
    fleet_spec = build_policy("wpkh", 1, hd_keys(1, seed_base=FLEET_SEED))
    custody_spec = build_policy("wsh-sortedmulti", 2, hd_keys(3, seed_base=81))
    with sessions.begin() as s:
        for name, spec in (("fleet", fleet_spec), ("custody", custody_spec)):
            registry.set_status(s, registry.create_policy(s, name, spec, gap_limit=40), "active", actor="admin")
    funding = mine_coins(rpc, wallet, 1)[0]
    payouts = [(fleet_spec.embit(0).derive(i).script_pubkey().data, 60_000 + 1_000 * i) for i in range(24)]
    payouts += [(fleet_spec.embit(0).derive(30 + i).script_pubkey().data, 500) for i in range(4)]
    rpc.sendrawtransaction(wallet.sign([funding], payouts + [(wallet.wpkh, funding.value - 1_800_000 - 50_000)]))
    rpc.generatetoaddress(1, MINER)
    rpc.generatetodescriptor(1, fleet_spec.descriptor(0).split("#")[0].replace("/0/*", "/0/35"))   # a coinbase payout
    Syncer(sessions, rpc).sync_once()
    return sessions


def fleet_balance(sessions) -> dict:
    with sessions() as s:
        return ledger.balances(s, registry.get_policy(s, "fleet"))[0].to_json()


def test_a_fee_rate_above_the_cap_defers_every_coin(rpc, world):
    with world.begin() as s:
        made = sweeps.sweep(s, rpc, "fleet", "custody", actor="sweeper", fee_rate=40.0, max_fee_rate=20.0)
        assert made == []
        fleet = registry.get_policy(s, "fleet")
        deferred = sweeps.plan(s, fleet, fee_rate=40.0, max_fee_rate=20.0).deferred
    assert sum("waiting for a fee window" in why for why in deferred.values()) == 28
    assert sum("immature coinbase" in why for why in deferred.values()) == 1


def test_only_an_active_custody_policy_is_a_destination(rpc, world):
    with world.begin() as s, pytest.raises(CustodyError, match="not an active custody policy"):
        sweeps.sweep(s, rpc, "fleet", "fleet", actor="sweeper", fee_rate=2.0)
    with world.begin() as s, pytest.raises(CustodyError, match="not an address of an active custody policy"):
        sweeps.check_custody_address(s, TestWallet("outsider").address())
    with world.begin() as s, pytest.raises(CustodyError, match="not a fleet payout wallet"):
        sweeps.sweep(s, rpc, "custody", "custody", actor="sweeper", fee_rate=2.0)
    with world.begin() as s:       # an ordinary spend of the fleet wallet is not approved by being a sweep
        fleet = registry.get_policy(s, "fleet")
        spend = spends.request_spend(s, fleet, "mallory", [(TestWallet("outsider").address(), 50_000)], fee_rate=2.0)
        with pytest.raises(CustodyError, match="not a sweep"):
            sweeps.approve_custody_sweep(s, spend, actor="mallory")
        s.rollback()


def test_matured_payouts_are_swept_in_batches_into_custody(rpc, world):
    with world.begin() as s:
        made = sweeps.sweep(s, rpc, "fleet", "custody", actor="sweeper", fee_rate=10.0, max_inputs=10)
        assert [m.inputs for m in made] == [10, 10, 4]
        deferred = json.loads(made[0].deferred)
        assert sum("stranded" in why for why in deferred.values()) == 4      # 500 sat < 683 sat at 10 sat/vB
        assert sum("immature" in why for why in deferred.values()) == 1
        assert len({m.destination for m in made}) == 3                         # a fresh custody address each
        spend_ids = [m.spend_id for m in made]
        for m in made:
            policy, address = sweeps.check_custody_address(s, m.destination)
            assert policy.name == "custody" and address.branch == 0
            psbt = PSBT.from_string(spends.get_spend(s, m.spend_id).psbt)
            assert len(psbt.outputs[0].bip32_derivations) == 3 and psbt.outputs[0].witness_script is not None
            assert 68 <= (m.vsize - 11 - 43) / m.inputs <= 69        # ~68 vB per P2WPKH input
    for spend_id in spend_ids:
        with world.begin() as s:
            spend = spends.get_spend(s, spend_id)
            psbt = PSBT.from_string(spend.psbt)
            psbt.sign_with(fleet_root())
            spends.add_signatures(s, spend, psbt.to_string(), actor="fleet signer")
            assert spend.state == "signed"
        spends.broadcast(world, spend_id, rpc, actor="sweeper")
    rpc.generatetoaddress(1, MINER)
    with world.begin() as s:
        assert all(spends.track(s, spends.get_spend(s, i), rpc).state == "confirmed" for i in spend_ids)
    Syncer(world, rpc).sync_once()
    left = fleet_balance(world)
    assert left["confirmed"] == 4 * 500 and left["immature"] > 0
    with world() as s:
        custody = ledger.balances(s, registry.get_policy(s, "custody"))[0]
        swept = sum(r.amount for r in s.scalars(select(Sweep)))
        kinds = [e.kind for e in s.scalars(select(EventLogEntry))]
    assert custody.confirmed == swept == sum(60_000 + 1_000 * i for i in range(24)) - sum(m.fee for m in made)
    assert kinds.count("mining.sweep") == 3


def test_a_swept_coin_is_not_swept_twice(rpc, world):
    with world.begin() as s:
        made = sweeps.sweep(s, rpc, "fleet", "custody", actor="sweeper", fee_rate=10.0)
    assert made == []                       # only stranded and immature coins are left
