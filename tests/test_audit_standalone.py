"""The auditor's verifier stands alone (issue 18, item 4): audit/ imports nothing of custody/, coordinator/,
the signer or regtest/, and `custody-audit verify` gives the same verdict in a Python where those cannot
be imported at all, with only audit/ and its own dependencies (embit, py-bitcoinkernel, PyNaCl)."""
from __future__ import annotations

import ast
import json
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from audit import proof_format, rpc as audit_rpc
from regtest.launcher import free_port

from .test_reserves import AUDIT, NONCE, craft, funded_coins, world  # noqa: F401  (world: the fixture)

ROOT = Path(__file__).resolve().parent.parent
CUSTODIANS = ("custody", "coordinator", "custody_signer", "regtest")

# Run in `python -S -c`: no site-packages .pth hooks (one imports custody_signer at start-up), only the
# repository root (for audit/) and the third-party packages on the path, and a finder that refuses the
# custodian's packages before anything is imported; whatever slipped into sys.modules is dropped.
BLOCKED = f"""
import sys
BLOCKED = {CUSTODIANS!r}

class NotOnTheAuditorsMachine:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{{name}} is not installed on the auditor's machine")
        return None

sys.meta_path.insert(0, NotOnTheAuditorsMachine())
for loaded in [m for m in sys.modules if m.split(".")[0] in BLOCKED]:
    del sys.modules[loaded]
"""
RUN_AUDIT = BLOCKED + "from audit.cli import main\nsys.exit(main(sys.argv[1:]))\n"


def blocked_python(code: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    paths = dict.fromkeys([str(ROOT), sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    return subprocess.run([sys.executable, "-S", "-c", code, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={"PYTHONPATH": ":".join(paths), "PATH": "/usr/bin:/bin"})


# -- (a) no import of the custodian's code, anywhere in audit/ --------------------------------------------------
def custodian_imports(source: str) -> list[str]:
    """Every import of a custodian package in `source`: top-level, inside functions, or by name."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""] if node.level == 0 else []
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and (getattr(node.func, "id", None) == "__import__" or getattr(node.func, "attr", None) == "import_module")):
            names = [node.args[0].value]
        else:
            continue
        found += [n for n in names if n.split(".")[0] in CUSTODIANS]
    return found


def test_the_walk_finds_an_import_wherever_it_hides():
    source = ("import os\nfrom . import rpc\nfrom custody.chain.node_client import NodeClient\n"
              "def f():\n    import coordinator.app\n    if True:\n        from custody_signer import cli\n"
              "    return importlib.import_module('regtest.node')\n")
    assert custodian_imports(source) == ["custody.chain.node_client", "coordinator.app", "custody_signer", "regtest.node"]


def test_audit_imports_nothing_of_the_custodians():
    modules = sorted((ROOT / "audit").glob("*.py"))
    assert {m.name for m in modules} >= {"cli.py", "verify.py", "chain.py", "rpc.py", "proof_format.py"}
    leaks = {m.name: found for m in modules if (found := custodian_imports(m.read_text()))}
    assert leaks == {}


# -- (b) the auditor's command, where the custodian's packages cannot be imported ------------------------------
def test_the_block_refuses_the_custodians_packages_and_lets_audit_in():
    for name in CUSTODIANS:
        done = blocked_python(BLOCKED + f"import {name}\n", timeout=60)
        assert done.returncode == 1 and f"{name} is not installed on the auditor's machine" in done.stderr, name
    done = blocked_python(BLOCKED + "import audit.cli, audit.verify, audit.bip127, nacl, pbk, embit\n"
                          "print(sorted(m for m in sys.modules if m.split('.')[0] in BLOCKED))\n", timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stderr


def test_custody_audit_verify_gives_the_same_verdict_without_the_custodians_code(rpc, world, tmp_path):
    package = craft(rpc, world, funded_coins(rpc, world), rpc.getblockcount() - 6)
    (tmp_path / "package.json").write_text(json.dumps(package))
    node = rpc.url.replace("http://", f"http://{rpc._user}:{rpc._password}@") if rpc._user else rpc.url
    args = ["verify", str(tmp_path / "package.json"), "--node", node, "--nonce", NONCE, "--audit", AUDIT,
            "--key", str(tmp_path / "auditor.key"), "--workers", "1"]
    if rpc._cookie_file:
        args += ["--cookie", str(rpc._cookie_file)]
    for nonce, code, verdict in ((NONCE, 0, "verdict: valid: 600000000 sat in 3 coins"),
                                 ("someone-elses-nonce", 2, "verdict: invalid")):
        argv = [a if a != NONCE else nonce for a in args]
        alone = blocked_python(RUN_AUDIT, *argv)
        usual = subprocess.run([sys.executable, "-m", "audit.cli", *argv], cwd=ROOT, capture_output=True, text=True,
                               timeout=300)
        assert (alone.returncode, usual.returncode) == (code, code), alone.stderr + usual.stderr
        assert verdict in alone.stdout and alone.stdout == usual.stdout


def test_refusals_are_one_line_without_the_custodians_code(rpc, world, tmp_path):
    (tmp_path / "p.json").write_text(json.dumps({"format": "custody-proof-of-reserves/1"}))
    done = blocked_python(RUN_AUDIT, "verify", str(tmp_path / "p.json"), "--node", rpc.url, "--nonce", NONCE,
                          "--key", str(tmp_path / "k"), timeout=60)
    assert done.returncode == 1 and done.stderr.count("\n") == 1 and "package" in done.stderr, done.stderr
    (tmp_path / "p.json").write_text(json.dumps(craft(rpc, world, funded_coins(rpc, world), rpc.getblockcount() - 6)))
    done = blocked_python(RUN_AUDIT, "verify", str(tmp_path / "p.json"), "--node", f"http://u:p@127.0.0.1:{free_port()}",
                          "--nonce", NONCE, "--key", str(tmp_path / "k"), timeout=60)
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
    assert "custody-audit: error: cannot reach Bitcoin node" in done.stderr


# -- the auditor's own node client ---------------------------------------------------------------------------
def test_the_auditors_client_keeps_the_nodes_error_code_and_message(rpc, node):
    client = audit_rpc.Node(node.url, cookie_file=node.cookie_file, timeout=10)
    assert client.getblockcount() == rpc.getblockcount()
    with pytest.raises(audit_rpc.RPCError) as e:
        client.getblockheader("00" * 32)
    assert e.value.code == -5 and e.value.message and audit_rpc.is_rpc_error(e.value)
    tip, missing = client.batch([("getblockhash", [0]), ("getblockhash", [10 ** 6])])
    assert tip == rpc.getblockhash(0)
    assert isinstance(missing, audit_rpc.RPCError) and missing.code == -8 and audit_rpc.is_rpc_error(missing)


def test_the_auditors_client_refuses_wrong_credentials_and_a_silent_node(node, tmp_path):
    wrong = audit_rpc.Node(node.url.replace("http://", "http://nobody:wrong@"), timeout=10)
    with pytest.raises(audit_rpc.NodeAuthError, match="rejected the RPC credentials"):
        wrong.getblockcount()
    with pytest.raises(audit_rpc.NodeAuthError, match="no RPC credentials"):
        audit_rpc.Node(node.url, cookie_file=tmp_path / "no-such-cookie").getblockcount()
    down = audit_rpc.Node(f"http://u:p@127.0.0.1:{free_port()}", timeout=5)
    with pytest.raises(audit_rpc.NodeUnreachable, match="connection refused") as e:
        down.getblockcount()
    assert not audit_rpc.is_rpc_error(e.value)


def test_the_auditors_to_spend_is_bip322s():
    """audit/ builds BIP-322's virtual transaction itself; it is byte for byte the custodian's (and so the
    BIP's, whose vectors tests/test_bip322.py checks), for the empty message and a proof's message."""
    from custody.bitcoin import bip322
    message = proof_format.compose_message("Acme Treasury", AUDIT, NONCE, "ab" * 32, 100)
    for m in (b"", b"Hello World", message):
        assert proof_format.to_spend(m).serialize() == bip322.to_spend(proof_format.OP_TRUE, m).serialize()
    assert proof_format.to_spend(message).txid() != proof_format.to_spend(message + b" ").txid()
