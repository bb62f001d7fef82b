"""The layer rules hold (issue 18, item 5): `lint-imports` checks the contracts of pyproject.toml's
[tool.importlinter] (the auditor's verifier and the regtest node stand alone, the domain knows nothing of
its interfaces, …), so a wrong import fails the suite, as the second test shows with one."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

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


def test_a_wrong_import_breaks_a_contract(tmp_path):
    """The same check on a copy of audit/ that imports the custodian's code is refused, naming the import."""
    shutil.copytree(ROOT / "audit", tmp_path / "audit", ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "audit" / "leak.py").write_text("from custody import spends  # the auditor trusting the custodian\n")
    run = lint(tmp_path)
    assert run.returncode != 0
    assert "audit.leak -> custody.spends" in run.stdout
