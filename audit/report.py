"""The auditor's report: machine-readable JSON signed with the auditor's ed25519 key, and an HTML page
to file. The signature covers the canonical JSON of the report (sorted keys, no spaces), so anyone with
the auditor's public key can check that nothing in it was changed, with `custody-audit check-report`.
"""
from __future__ import annotations

import html
import json
import os
from datetime import datetime, timezone
from pathlib import Path

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from .verify import Verification

REPORT_FORMAT = "custody-proof-of-reserves-report/1"


class ReportError(ValueError):
    """A report whose signature does not hold, or that is not a report."""


def canonical(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def load_or_create_key(path: Path) -> SigningKey:
    """The auditor's signing key (32-byte seed, hex, mode 0600), made on first use."""
    if path.exists():
        try:
            return SigningKey(bytes.fromhex(path.read_text().strip()))
        except ValueError:
            raise ReportError(f"{path} is not a 32-byte hex ed25519 seed") from None
    key = SigningKey.generate()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(bytes(key).hex() + "\n")
    return key


def build(package: dict, package_sha256: str, result: Verification, *, auditor: str) -> dict:
    return {
        "format": REPORT_FORMAT, "auditor": auditor,
        "checked_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "verdict": result.verdict,
        "package_sha256": package_sha256, "txid": package.get("txid"),
        "custodian": package["custodian"], "audit": package["audit"], "nonce": package["nonce"],
        "network": package["network"], "height": package["height"], "block_hash": package["block_hash"],
        "coins": result.coins, "total": result.total, "node": result.node,
        "checks": [{"name": c.name, "verdict": c.verdict, "detail": c.detail} for c in result.checks],
        "timings": result.timings,
    }


def sign(report: dict, key: SigningKey) -> dict:
    return {"report": report, "signature": {"algorithm": "ed25519", "public_key": key.verify_key.encode().hex(),
                                            "value": key.sign(canonical(report)).signature.hex()}}


def check(signed: dict, public_key: str | None = None) -> dict:
    """The report, if its signature holds (and is by `public_key`, when given)."""
    try:
        report, sig = signed["report"], signed["signature"]
        signer = sig["public_key"]
        if public_key is not None and signer != public_key.lower():
            raise ReportError(f"the report is signed by {signer}, not by {public_key}")
        VerifyKey(bytes.fromhex(signer)).verify(canonical(report), bytes.fromhex(sig["value"]))
    except (KeyError, TypeError, ValueError) as e:
        if isinstance(e, ReportError):
            raise
        raise ReportError(f"not a signed report ({e})") from None
    except BadSignatureError:
        raise ReportError("the report's signature does not verify: it was changed after signing") from None
    return report


_COLOURS = {"valid": "#1a7f37", "invalid": "#cf222e", "inconclusive": "#9a6700"}


def to_html(signed: dict) -> str:
    r = signed["report"]
    e = html.escape
    rows = "\n".join(f"<tr><td>{e(c['name'])}</td><td style='color:{_COLOURS.get(c['verdict'], '#000')}'>"
                     f"<b>{e(c['verdict'])}</b></td><td>{e(c['detail'])}</td></tr>" for c in r["checks"])
    btc = f"{r['total'] // 100_000_000}.{r['total'] % 100_000_000:08d}"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Proof of reserves: {e(r['custodian'])}, {e(r['audit'])}</title>
<style>body{{font-family:sans-serif;max-width:60rem;margin:2rem auto}}td,th{{border:1px solid #ccc;padding:.3rem .6rem;
text-align:left;vertical-align:top}}table{{border-collapse:collapse}}code{{word-break:break-all}}</style></head>
<body>
<h1>Proof of reserves: <span style="color:{_COLOURS.get(r['verdict'], '#000')}">{e(r['verdict'])}</span></h1>
<table>
<tr><th>Custodian</th><td>{e(r['custodian'])}</td></tr>
<tr><th>Audit</th><td>{e(r['audit'])}</td></tr>
<tr><th>Auditor</th><td>{e(r['auditor'])}</td></tr>
<tr><th>Nonce</th><td><code>{e(r['nonce'])}</code></td></tr>
<tr><th>Network</th><td>{e(r['network'])}</td></tr>
<tr><th>Height</th><td>{r['height']} (<code>{e(r['block_hash'])}</code>)</td></tr>
<tr><th>Reserves</th><td>{btc} BTC ({r['total']} sat) in {r['coins']} coins</td></tr>
<tr><th>Node</th><td>{e(str(r['node'].get('chain')))} at height {r['node'].get('tip_height')}</td></tr>
<tr><th>Checked</th><td>{e(r['checked_at'])}</td></tr>
<tr><th>Package SHA-256</th><td><code>{e(r['package_sha256'])}</code></td></tr>
</table>
<h2>Checks</h2>
<table><tr><th>Check</th><th>Verdict</th><th>Detail</th></tr>
{rows}
</table>
<p>Signed by the auditor's ed25519 key <code>{e(signed['signature']['public_key'])}</code>; check the JSON report with
<code>custody-audit check-report</code>.</p>
</body></html>
"""
