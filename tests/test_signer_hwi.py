"""The reference signer through HWI exactly as a hardware wallet: the `hwi` command line (a separate
process, which finds the device through the `.pth` import hook `make` installs) and `hwilib.commands`."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from embit import bip32
from embit.psbt import PSBT
from embit.script import p2wpkh
from hwilib import commands
from hwilib.common import Chain

from custody.bitcoin import bip322
from custody_signer.simulator import spawn

from .support import stop
from .test_signer_attacks import spend

HWI = str(Path(sys.executable).with_name("hwi"))


@pytest.fixture(scope="module")
def simulator(tmp_path_factory):
    root = tmp_path_factory.mktemp("hwi")
    env = {**os.environ, "CUSTODY_SIGNER_DISCOVERY": str(root / "d")}
    processes = [spawn(root / name, env) for name in ("one", "two")]
    yield env, [{**info, "state": root / name} for (_, info), name in zip(processes, ("one", "two"))]
    for process, _ in processes:
        stop(process)


def hwi(env, *argv) -> dict | list:
    run = subprocess.run([HWI, "--chain", "regtest", *argv], capture_output=True, text=True, env=env, timeout=60)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


def test_hwi_enumerates_and_reads_keys(simulator):
    env, infos = simulator
    listed = hwi(env, "enumerate")
    mine = [d for d in listed if d["type"] == "custodysigner"]
    assert {d["fingerprint"] for d in mine} == {i["fingerprint"] for i in infos}
    assert all(d["model"] == "custody-signer-sim" and d["label"].startswith("RS-") for d in mine)
    xpub = hwi(env, "-f", infos[0]["fingerprint"], "getxpub", "m/48h/1h/0h/2h")["xpub"]
    assert xpub.startswith("tpub")
    refused = subprocess.run([HWI, "--chain", "regtest", "-f", infos[0]["fingerprint"], "displayaddress",
                              "--path", "m/84h/1h/0h/0/0"], capture_output=True, text=True, env=env)
    assert "registered wallets only" in refused.stdout + refused.stderr


def test_hwi_registers_displays_and_signs(simulator, monkeypatch):
    env, infos = simulator
    monkeypatch.setenv("CUSTODY_SIGNER_DISCOVERY", env["CUSTODY_SIGNER_DISCOVERY"])
    clients = [commands.find_device(fingerprint=i["fingerprint"], chain=Chain.REGTEST) for i in infos]
    keys = [f"[{i['fingerprint']}/48h/1h/0h/2h]{commands.getxpub(c, 'm/48h/1h/0h/2h')['xpub']}/<0;1>/*"
            for i, c in zip(infos, clients)]
    descriptor = f"wsh(sortedmulti(1,{','.join(keys)}))"
    shown = [c.register_policy("pair", descriptor)["first_address"] for c in clients]
    assert shown[0] == shown[1]
    at_zero = descriptor.replace("/<0;1>/*", "/0/0")
    assert hwi(env, "-f", infos[0]["fingerprint"], "displayaddress", "--desc", at_zero)["address"] == shown[0]
    policy = infos[0]["state"] / "policy.json"            # the device's policy is approved on the device
    policy.write_text(json.dumps({"approvers": {}, "rules": [{"wallet": "pair"}]}))
    subprocess.run([sys.executable, "-m", "custody_signer.cli", "hsm-policy", "--state", str(infos[0]["state"]),
                    str(policy)], check=True, capture_output=True, env=env)
    psbt = spend(descriptor)
    signed = hwi(env, "-f", infos[0]["fingerprint"], "signtx", psbt.to_string())
    assert signed["signed"] is True
    assert len(PSBT.from_string(signed["psbt"]).inputs[0].partial_sigs) == 1
    account = bip32.HDKey.from_base58(commands.getxpub(clients[1], "m/48h/1h/0h/2h")["xpub"])
    signature = commands.signmessage(clients[1], "hello", "m/48h/1h/0h/2h")["signature"]
    assert bip322.verify_simple(p2wpkh(account.key).data, b"hello", signature)
