// A passkey as the second factor for logging in: made on the enrollment link or the account page, asked
// for after a correct password and to confirm changes of one's own credentials. The browser's answers
// travel as JSON in a form field; the coordinator verifies them (custody/credentials.py).
"use strict";

async function passkeyOptions(path, fields, headers) {
  const response = await fetch(path, {
    method: "POST", credentials: "same-origin", headers: headers || {}, body: new URLSearchParams(fields || {}),
  });
  const data = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(typeof data.detail === "string" ? data.detail : `HTTP ${response.status}`);
  return data;
}

async function makePasskey(options) {
  const credential = await navigator.credentials.create({
    publicKey: PublicKeyCredential.parseCreationOptionsFromJSON(options.publicKey) });
  return JSON.stringify(credential.toJSON());
}

async function usePasskey(options) {
  const credential = await navigator.credentials.get({
    publicKey: PublicKeyCredential.parseRequestOptionsFromJSON(options.publicKey) });
  return JSON.stringify(credential.toJSON());
}

function showPasskeyError(form, e) {
  const error = form.querySelector(".passkey-error");
  error.textContent = e.name === "NotAllowedError" ? "the passkey was not used (cancelled or timed out): try again"
    : (e.message || String(e));
  error.hidden = false;
}

// The login's second step: the options came with the page, bound to this pending login.
function setupPasskeyLogin(form) {
  form.querySelector("#use-passkey").addEventListener("click", async () => {
    try {
      form.elements.assertion.value = await usePasskey(JSON.parse(form.dataset.options));
      form.submit();
    } catch (e) { showPasskeyError(form, e); }
  });
}

// The enrollment link: a passkey instead of the TOTP secret, made with options the link authorises.
function setupEnrollment(form) {
  const totp = document.getElementById("totp-choice"), passkey = document.getElementById("passkey-choice");
  const code = form.elements.code;
  const chosen = () => (form.querySelector('input[name="factor"]:checked') || {}).value;
  const show = () => {
    const usePasskeyNow = chosen() === "passkey";
    totp.hidden = usePasskeyNow;
    passkey.hidden = !usePasskeyNow;
    code.required = !usePasskeyNow && code.dataset.required === "yes";
  };
  form.querySelectorAll('input[name="factor"]').forEach((radio) => radio.addEventListener("change", show));
  show();
  form.addEventListener("submit", async (event) => {
    if (chosen() !== "passkey") { form.elements.passkey.value = ""; return; }
    event.preventDefault();
    try {
      const options = await passkeyOptions(form.action + "/passkey-options", { login_csrf: form.elements.login_csrf.value });
      form.elements.passkey.value = await makePasskey(options);
      form.submit();
    } catch (e) { showPasskeyError(form, e); }
  });
}

// The account page: a passkey account confirms each change with its passkey (a challenge for this
// session), and a new passkey is made for the switch to one.
function setupAccountForm(form) {
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const headers = { "x-csrf-token": csrfToken() };
    try {
      if (form.dataset.reauth === "passkey") {
        form.elements.assertion.value = await usePasskey(await passkeyOptions("/account/passkey/challenge", {}, headers));
      }
      if (form.elements.new_passkey) {
        form.elements.new_passkey.value = await makePasskey(await passkeyOptions("/account/passkey/options", {}, headers));
      }
      form.submit();
    } catch (e) { showPasskeyError(form, e); }
  });
}

document.addEventListener("DOMContentLoaded", () => {
  const login = document.getElementById("passkey-login");
  if (login) setupPasskeyLogin(login);
  const enroll = document.getElementById("enroll");
  if (enroll) setupEnrollment(enroll);
  document.querySelectorAll("form[data-passkey-form]").forEach(setupAccountForm);
});
