"""The layer rules hold (issue 18, item 5): `lint-imports` checks the contracts of pyproject.toml's
[tool.importlinter] (the auditor's verifier and the regtest node stand alone, the domain knows nothing of
its interfaces, each capability imports only those below it, the interfaces are thin, …), so a wrong
import fails the suite, as two of these tests show with one each."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINT = str(Path(sys.executable).with_name("lint-imports"))


def lint(where: Path = ROOT) -> subprocess.CompletedProcess:
    """lint-imports with the project's contracts, reading the packages found first from `where`."""
    return subprocess.run([LINT, "--no-cache", "--config", str(ROOT / "pyproject.toml")], cwd=where,
                          capture_output=True, text=True, timeout=300)


def test_the_import_contracts_hold():
    run = lint()
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert "broken" not in run.stdout.lower().replace("0 broken", "")


def test_the_contracts_name_every_internal_module_of_the_signer():
    """A new module of the signer is private unless the contracts say otherwise: the lists of what the
    coordinator may not import must name every module but the protocol."""
    import tomllib
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    [private] = [c for c in contracts if c["name"].startswith("The coordinator reaches a device only")]
    modules = {f"custody_signer.{p.stem}" for p in (ROOT / "signer-firmware" / "custody_signer").glob("*.py")
               if p.stem not in ("__init__", "protocol")}
    assert set(private["forbidden_modules"]) == modules


def test_the_contracts_name_every_part_of_the_service():
    """A new module of coordinator/ beside the interfaces is one the interfaces use, so it may not import
    them: the contract's list must name every such module."""
    import tomllib
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    [parts] = [c for c in contracts if c["name"].startswith("The service's parts")]
    above = {"__init__", "app", "server", "demo"}      # what runs the interfaces, or is one
    modules = {f"coordinator.{p.stem}" for p in (ROOT / "coordinator").glob("*.py") if p.stem not in above}
    assert set(parts["source_modules"]) == modules


FACES = {"custody.errors", "custody.ledger.service", "custody.spending.service", "custody.eventlog.service",
         "custody.devices.service", "custody.rotation.service", "custody.reserves.service", "custody.mining.service",
         "custody.governance.proposals", "custody.people.credentials",
         "custody.store.db", "custody.chain.node_client", "custody.eventlog.signer"}   # what the CLI starts with


def test_the_contracts_keep_every_module_but_the_faces_from_the_interfaces():
    """A capability's tables, helpers and inner modules (a new one too) are private to the domain: the
    interfaces may import only its face (and the pure Bitcoin functions). The contract's list must name
    every other module of custody/."""
    import tomllib
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    [faces] = [c for c in contracts if c["name"].startswith("Interfaces reach a capability through its face")]
    modules = set()
    for path in (ROOT / "custody").rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if path.name == "__init__.py" or "__pycache__" in parts or parts[1] == "bitcoin" or "migrations" in parts:
            continue
        modules.add(".".join(parts))
    assert set(faces["forbidden_modules"]) == modules - FACES
    assert any(m.endswith(".models") for m in faces["forbidden_modules"])


WRONG_IMPORTS = {
    # the auditor's verifier trusting the custodian's code
    "audit": ("audit/leak.py", "from custody.spending import spends", "audit.leak -> custody.spending.spends"),
    # the ledger reaching up into the mining treasury, a capability above it
    "layers": ("custody/ledger/coins.py", "from custody.mining import service",
               "custody.ledger.coins -> custody.mining.service"),
    # a route calling the spends module itself instead of the spending service
    "face": ("coordinator/api/spending.py", "from custody.spending import spends",
             "coordinator.api.spending -> custody.spending.spends"),
}


@pytest.mark.parametrize("case", list(WRONG_IMPORTS))
def test_a_wrong_import_breaks_a_contract(tmp_path, case):
    """The same check on a copy of the package with one wrong import added is refused, naming the import."""
    path, line, named = WRONG_IMPORTS[case]
    package = path.split("/")[0]
    shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    target = tmp_path / path
    target.write_text((target.read_text() if target.exists() else "") + f"\n{line}\n")
    run = lint(tmp_path)
    assert run.returncode != 0
    assert named in run.stdout
