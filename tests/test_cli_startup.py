"""`custody --help` and `custody derive` load no database layer, services or HTTP stack; the copies
the CLI keeps to avoid importing them stay equal to the originals."""
from __future__ import annotations

import argparse
import importlib
import subprocess
import sys

import pytest

from coordinator.cli import ledger as ledger_cli, main as cli
from custody.ledger import coins as ledger
from custody.store import db

from .conftest import hd_keys

HEAVY = ("sqlalchemy", "alembic", "fastapi", "uvicorn", "starlette", "custody.ledger.service", "custody.store.db")


def loaded_after(argv: list[str]) -> set[str]:
    """Modules loaded by running `custody ARGV` in a fresh interpreter."""
    code = ("import sys\nfrom coordinator.cli.main import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
            "print(' '.join(sys.modules), file=sys.stderr)")
    done = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, check=True)
    return set(done.stderr.split())


def heavy(modules: set[str]) -> set[str]:
    return {m for m in modules if any(m == h or m.startswith(h + ".") for h in HEAVY)}


@pytest.mark.parametrize("argv", [["--help"], ["derive", "--help"], ["--version"]])
def test_help_loads_nothing_heavy(argv):
    assert heavy(loaded_after(argv)) == set()


def test_derive_loads_nothing_heavy():
    from custody.bitcoin.policies import build_policy
    descriptor = build_policy("wsh-sortedmulti", 2, hd_keys(3, seed_base=40)).descriptor(0)
    assert heavy(loaded_after(["derive", descriptor, "--to", "3"])) == set()


def test_a_group_loads_only_when_chosen():
    assert "coordinator.cli.mining" not in loaded_after(["--help"])
    assert "coordinator.cli.mining" in loaded_after(["mining", "--help"])


def test_copied_constants_match():
    assert ledger_cli.COIN_STATES == ledger.STATES
    assert ledger_cli.LABEL_TYPES == ledger.LABEL_TYPES


@pytest.mark.parametrize("env", [{}, {"CUSTODY_HOME": "/srv/custody"}, {"CUSTODY_DB": "postgresql://h/c"}])
def test_default_db_matches(monkeypatch, env):
    monkeypatch.delenv("CUSTODY_HOME", raising=False)
    monkeypatch.delenv("CUSTODY_DB", raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert cli._default_db() == db.default_url()


@pytest.mark.parametrize("module", list(cli._GROUPS))
def test_group_help_as_the_module_gives_it(module):
    scratch = argparse.ArgumentParser().add_subparsers()

    def command(name, handler, help_, parent=scratch):
        return parent.add_parser(name, help=help_)
    extra = () if module == "devices" else (lambda a: None,)
    importlib.import_module(f"coordinator.cli.{module}").add_commands(scratch, command, lambda fn: fn, *extra)
    given = {a.dest: a.help for a in scratch._choices_actions}
    assert {name: given[name] for name in cli._GROUPS[module]} == cli._GROUPS[module]


def test_chosen_group_parses_as_before_and_the_listing_stays():
    parser = cli._parser()
    before = parser.format_help()
    args = parser.parse_args(["--json", "mining", "pool", "add", "p1", "--kind", "ocean"])
    assert (args.command, args.mining_command, args.pool_command, args.name, args.kind) == \
        ("mining", "pool", "add", "p1", "ocean")
    assert callable(args.handler) and args.json
    with pytest.raises(SystemExit):
        parser.parse_args(["mining", "pool", "add", "p1", "--kind", "nope"])
    assert parser.format_help() == before
