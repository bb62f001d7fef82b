// Approvals and approval keys. The officer's own passkey or key file signs in this browser; the
// coordinator receives only public keys and signatures (and never the key file).
"use strict";

async function postJson(path, body) {
  const response = await fetch(path, {
    method: "POST", credentials: "same-origin",
    headers: { "content-type": "application/json", "x-csrf-token": csrfToken() },
    body: JSON.stringify(body || {}),
  });
  const data = response.status === 204 ? {} : await response.json().catch(() => ({}));
  if (!response.ok) {
    const detail = data.detail;
    throw new Error(typeof detail === "string" ? detail : detail ? JSON.stringify(detail) : `HTTP ${response.status}`);
  }
  return data;
}

const toHex = (bytes) => Array.from(new Uint8Array(bytes), (b) => b.toString(16).padStart(2, "0")).join("");
const fromB64url = (text) => Uint8Array.from(atob(text.replace(/-/g, "+").replace(/_/g, "/")), (c) => c.charCodeAt(0));

function pemBody(pem) {
  const match = pem.match(/-----BEGIN PRIVATE KEY-----([\s\S]+?)-----END PRIVATE KEY-----/);
  if (!match) throw new Error("not an approval key file (a PKCS#8 PEM private key, from `custody approver keygen`)");
  return Uint8Array.from(atob(match[1].replace(/\s+/g, "")), (c) => c.charCodeAt(0));
}

// ECDSA in WebCrypto gives r||s; the devices read DER (as OpenSSL and the `cryptography` library write it).
function derSignature(raw) {
  const integer = (bytes) => {
    let i = 0;
    while (i < bytes.length - 1 && bytes[i] === 0) i++;
    let body = Array.from(bytes.slice(i));
    if (body[0] & 0x80) body = [0, ...body];
    return [0x02, body.length, ...body];
  };
  const r = integer(new Uint8Array(raw.slice(0, 32))), s = integer(new Uint8Array(raw.slice(32)));
  return new Uint8Array([0x30, r.length + s.length, ...r, ...s]);
}

async function keyFileProof(file, message) {
  const der = pemBody(await file.text());
  const data = new TextEncoder().encode(message);
  try {
    const key = await crypto.subtle.importKey("pkcs8", der, { name: "Ed25519" }, true, ["sign"]);
    const signature = await crypto.subtle.sign("Ed25519", key, data);
    const jwk = await crypto.subtle.exportKey("jwk", key);
    return { kind: "ed25519", public_key: toHex(fromB64url(jwk.x)), signature: toHex(signature) };
  } catch (e) { /* not an ed25519 key: try P-256 */ }
  const key = await crypto.subtle.importKey("pkcs8", der, { name: "ECDSA", namedCurve: "P-256" }, true, ["sign"]);
  const raw = await crypto.subtle.sign({ name: "ECDSA", hash: "SHA-256" }, key, data);
  const jwk = await crypto.subtle.exportKey("jwk", key);
  const x = fromB64url(jwk.x), y = fromB64url(jwk.y);
  const point = new Uint8Array([2 + (y[31] & 1), ...x]);
  return { kind: "p256", public_key: toHex(point), signature: toHex(derSignature(raw)) };
}

function setupApproval(box) {
  const spend = box.dataset.spend, error = box.querySelector("#approval-error");
  const fail = (e) => { error.textContent = e.message || String(e); error.hidden = false; };
  async function approve(makeProof) {
    error.hidden = true;
    const request = await postJson(`/api/spends/${spend}/approval-request`);
    box.querySelector("#approval-message").textContent = request.message;
    const proof = await makeProof(request);
    await postJson(`/api/spends/${spend}/approve`, { proof });
    window.location.replace(window.location.pathname);
  }
  box.querySelector("#approve-passkey").addEventListener("click", () => approve(async (request) => {
    if (!request.options) throw new Error("you have no passkey enrolled: enrol one on the Approvers page, or use your key file");
    const options = PublicKeyCredential.parseRequestOptionsFromJSON(request.options.publicKey);
    const credential = await navigator.credentials.get({ publicKey: options });
    return { kind: "webauthn", credential: credential.toJSON() };
  }).catch(fail));
  const input = box.querySelector("#approve-key-file");
  input.addEventListener("change", () => {
    const file = input.files[0];
    input.value = "";
    if (file) approve((request) => keyFileProof(file, request.message)).catch(fail);
  });
}

function setupPasskeyEnrolment(button) {
  const error = document.getElementById("passkey-error");
  button.addEventListener("click", async () => {
    error.hidden = true;
    try {
      const options = await postJson("/api/me/passkeys/options");
      const credential = await navigator.credentials.create({
        publicKey: PublicKeyCredential.parseCreationOptionsFromJSON(options.publicKey) });
      const label = document.getElementById("passkey-label").value || "passkey";
      await postJson("/api/me/passkeys", { credential: credential.toJSON(), label });
      window.location.replace(window.location.pathname);
    } catch (e) { error.textContent = e.message || String(e); error.hidden = false; }
  });
}

document.addEventListener("DOMContentLoaded", () => {
  const box = document.getElementById("approval");
  if (box) setupApproval(box);
  const enrol = document.getElementById("enroll-passkey");
  if (enrol) setupPasskeyEnrolment(enrol);
});
