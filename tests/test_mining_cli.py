"""`custody mining ...` as an operator runs it on the embedded node: configure a pool, an account and the
fleet, import a statement and telemetry (and poll a simulated miner), reconcile a day, read and resolve
the findings, sweep into custody; every refusal is one line, exit 1, and leaves the database as it was."""
from __future__ import annotations

import json

import pytest
from sqlalchemy import func, select

from coordinator.cli.main import main
from custody.eventlog.models import EventLogEntry
from custody.mining import service as ms
from custody.mining.models import Discrepancy, MiningDevice, PoolAccount, StatementLine, Sweep
from custody.store.db import open_database
from regtest.miner import SimulatedMiner

from .test_mining_console import chain, OUTSIDER, policies, reconciled, statement_csv, telemetry_csv, TODAY

chain = chain                      # the module's chain: the fleet paid 250,000 and 120,000 sat today


@pytest.fixture
def run(node, db_url, capsys):
    """run(*args, json_=True) -> (exit code, output (parsed when JSON), error text)."""
    def call(*args, json_=True, actor="olga"):
        argv = ["--db", db_url, "--node", node.url, "--node-cookie", str(node.cookie_file), "--network", "regtest",
                "--actor", actor, *(["--json"] if json_ else []), "mining", *args]
        code = main(argv)
        out, err = capsys.readouterr()
        return code, (json.loads(out) if json_ and code == 0 and out.strip() else out), err
    return call


@pytest.fixture
def sessions(db_url, rpc, chain):
    made = open_database(db_url)
    policies(made, rpc, chain)
    return made


def counts(sessions) -> tuple:
    with sessions() as s:
        return tuple(s.scalar(select(func.count()).select_from(m))
                     for m in (EventLogEntry, PoolAccount, MiningDevice, StatementLine, Discrepancy, Sweep))


def test_the_treasury_on_the_command_line(run, sessions, chain, tmp_path):
    assert run("pool", "add", "Foundry", "--kind", "foundry")[1]["kind"] == "foundry"
    code, account, _ = run("account", "add", "Foundry", "main", "--scheme", "fpps", "--fee-bps", "200",
                           "--threshold", "0.001", "--address", chain["addr"][0], "--address", chain["addr"][1],
                           "--fleet", "fleet", actor="root")
    assert code == 0 and account["scheme"] == "FPPS" and account["payout_threshold"] == 100_000
    assert account["payout_addresses"] == chain["addr"][:2] and account["fleet_policy"] == "fleet"
    assert "Foundry/main  FPPS" in run("account", "list", json_=False)[1]
    assert run("device", "add", "S21-1", "--model", "S21", "--account", "main", "--worker", "rig1")[1]["worker"] == "rig1"

    miner = SimulatedMiner(100, "main.rig2").start()           # a miner answering the CGMiner API on loopback
    try:
        assert run("device", "add", "S21-2", "--model", "S21", "--account", "Foundry/main", "--worker", "rig2",
                   "--host", miner.host, "--port", str(miner.port))[0] == 0
        polled = run("telemetry", "poll")[1]
    finally:
        miner.stop()
    assert polled["answered"] == 1 and polled["ok"]["S21-2"]["worker"] == "main.rig2" and polled["skipped"] == ["S21-1"]
    assert polled["worker_mismatch"] == {}

    (tmp_path / "rigs.csv").write_text(telemetry_csv())
    (tmp_path / "statement.csv").write_text(statement_csv(chain))
    assert run("telemetry", "import", str(tmp_path / "rigs.csv"), "--format", "braiins")[1]["stored"] == 145
    imported = run("statement", "import", "main", "csv", str(tmp_path / "statement.csv"), json_=False)[1]
    assert "added: 3" in imported and "restatements: (none)" in imported
    code, report, _ = run("reconcile", "main", "--from", TODAY, "--to", TODAY, "--sweep-fee-rate", "2", json_=False)
    assert code == 0 and report.startswith(f"Foundry/main: {TODAY} to {TODAY}") and "UNDERPAID_VS_EXPECTED" in report
    assert "pay_ratio" in report and "NON_WHITELISTED_DESTINATION" in report

    [critical] = run("discrepancy", "list", "--severity", "critical")[1]
    assert critical["category"] == "NON_WHITELISTED_DESTINATION" and critical["state"] == "open"
    shown = run("discrepancy", "show", str(critical["id"]), json_=False)[1]
    assert "p-thief" in shown and OUTSIDER in shown and "statement lines:" in shown
    resolved = run("discrepancy", "resolve", str(critical["id"]), "--note", "refunded by the pool")[1]
    assert resolved["state"] == "resolved" and resolved["resolved_by"] == "olga" and resolved["note"] == "refunded by the pool"
    assert run("discrepancy", "list", "--state", "resolved")[1][0]["id"] == critical["id"]
    assert run("discrepancy", "list", "--category", "non_whitelisted_destination")[1] == []

    swept = run("sweep", "fleet", "--into", "custody", "--fee-rate", "2", json_=False)[1]
    assert "at 2 sat/vB into custody" in swept and "custody spend broadcast" in swept
    [made] = run("sweeps")[1]
    assert made["inputs"] == 2 and made["state"] == "signing" and made["custody"] == "custody"
    again = run("sweep", "fleet", "--into", "custody", "--fee-rate", "2")[1]
    assert again["sweeps"] == [] and set(again["deferred"].values()) == {"reserved"}   # by the pending sweep
    shown = run("account", "show", "main", json_=False)[1]
    assert "devices:" in shown and "S21-2" in shown and "p-thief" in shown


def test_refusals_are_one_line_exit_1_and_change_nothing(run, sessions, rpc, chain, tmp_path):
    reconciled(sessions, rpc, chain)
    before = counts(sessions)
    with sessions() as s:
        open_id = ms.discrepancies(s)[0]["id"]
    bad = tmp_path / "bad.csv"
    bad.write_text(statement_csv(chain).replace(",1000,", ",-5,"))
    for args, reason in [
        (("account", "add", "nosuch", "x", "--scheme", "FPPS", "--fee-bps", "200"), "no mining pool named 'nosuch'"),
        (("account", "add", "Foundry", "x", "--scheme", "FPPS", "--fee-bps", "200", "--fleet", "fleet",
          "--address", OUTSIDER), "is not an address of the fleet wallet 'fleet'"),
        (("account", "add", "Foundry", "x", "--scheme", "FPPS", "--fee-bps", "-1"), "0 to 10,000 basis points"),
        (("device", "add", "S21-9", "--model", "S21", "--account", "main", "--worker", "rig1"), "is device S21-1"),
        (("statement", "import", "main", "csv", str(bad)), "csv: line 2"),
        (("statement", "import", "main", "csv", str(tmp_path / "missing.csv")), "No such file"),
        (("telemetry", "import", str(bad), "--format", "braiins"), "nothing stored"),
        (("reconcile", "main", "--from", TODAY, "--to", "2020-01-01"), "before the first day"),
        (("reconcile", "nosuch", "--from", TODAY, "--to", TODAY), "no mining account 'nosuch'"),
        (("discrepancy", "resolve", "999", "--note", "x"), "no discrepancy #999"),
        (("discrepancy", "resolve", str(open_id), "--note", "  "), "a note saying why"),
        (("sweep", "fleet", "--into", "fleet", "--fee-rate", "2"), "not an active custody policy"),
        (("sweep", "fleet", "--into", "custody", "--fee-rate", "0"), "positive number of sat/vB"),
    ]:
        code, out, err = run(*args)
        assert code == 1 and out == "" and err.startswith("custody: error: ") and reason in err, (args, err)
        assert err.count("\n") == 1, err
    with pytest.raises(SystemExit) as usage:                     # argument errors: argparse's exit 2
        run("pool", "add", "X", "--kind", "slushpool")
    assert usage.value.code == 2
    assert counts(sessions) == before
