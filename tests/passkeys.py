"""A software passkey: makes the JSON a browser's navigator.credentials.create()/get() returns
(PublicKeyCredential.toJSON()), with a P-256 key, "none" attestation and a signature counter, so the
coordinator's WebAuthn checks can be exercised without a browser (the console test uses Chromium's
virtual authenticator for the real thing)."""
from __future__ import annotations

import hashlib
import json
import os

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from fido2 import cbor
from fido2.utils import websafe_encode

UP, UV, AT = 0x01, 0x04, 0x40


class SoftPasskey:
    def __init__(self, rp_id: str = "localhost", origin: str = "http://localhost:8000"):
        self.rp_id, self.origin = rp_id, origin
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.credential_id = os.urandom(16)
        self.counter = 0

    def _client_data(self, kind: str, challenge: str, origin: str | None = None) -> bytes:
        return json.dumps({"type": kind, "challenge": challenge, "origin": origin or self.origin,
                           "crossOrigin": False}).encode()

    def create(self, options: dict) -> dict:
        """The answer to navigator.credentials.create({publicKey: options["publicKey"]})."""
        numbers = self.key.public_key().public_numbers()
        cose = cbor.encode({1: 2, 3: -7, -1: 1, -2: numbers.x.to_bytes(32, "big"), -3: numbers.y.to_bytes(32, "big")})
        auth_data = (hashlib.sha256(self.rp_id.encode()).digest() + bytes([UP | UV | AT]) + self.counter.to_bytes(4, "big")
                     + bytes(16) + len(self.credential_id).to_bytes(2, "big") + self.credential_id + cose)
        attestation = cbor.encode({"fmt": "none", "attStmt": {}, "authData": auth_data})
        client_data = self._client_data("webauthn.create", options["publicKey"]["challenge"])
        return {"id": websafe_encode(self.credential_id), "rawId": websafe_encode(self.credential_id),
                "type": "public-key", "clientExtensionResults": {},
                "response": {"clientDataJSON": websafe_encode(client_data),
                             "attestationObject": websafe_encode(attestation)}}

    def get(self, options: dict, *, origin: str | None = None, counter: int | None = None) -> dict:
        """The answer to navigator.credentials.get({publicKey: options["publicKey"]})."""
        self.counter = self.counter + 1 if counter is None else counter
        auth_data = hashlib.sha256(self.rp_id.encode()).digest() + bytes([UP | UV]) + self.counter.to_bytes(4, "big")
        client_data = self._client_data("webauthn.get", options["publicKey"]["challenge"], origin)
        signature = self.key.sign(auth_data + hashlib.sha256(client_data).digest(), ec.ECDSA(hashes.SHA256()))
        return {"id": websafe_encode(self.credential_id), "rawId": websafe_encode(self.credential_id),
                "type": "public-key", "clientExtensionResults": {},
                "response": {"clientDataJSON": websafe_encode(client_data),
                             "authenticatorData": websafe_encode(auth_data),
                             "signature": websafe_encode(signature), "userHandle": None}}
