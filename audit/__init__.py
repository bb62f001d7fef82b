"""The auditor's side of proof of reserves: `custody-audit` and the verifier it runs.

The auditor installs, reviews and runs this package on their own machine against their own Bitcoin Core
node, so it stands alone: it imports nothing of the custodian's (custody/, coordinator/, the signer's
custody_signer, regtest/) and carries its own node client (`audit.rpc`). Its third-party dependencies are
- embit: descriptors, PSBTs (BIP-127 files) and the virtual transactions of BIP-322;
- py-bitcoinkernel (`pbk`): Bitcoin Core's script interpreter, which checks every input of a proof;
- PyNaCl: ed25519 signatures of the auditor's reports and of the custodian's event-log checkpoints.
tests/test_audit_standalone.py holds it to that.
"""
