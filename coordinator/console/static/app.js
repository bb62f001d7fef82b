// The console works without this script; it adds live updates, QR animation and small conveniences.
"use strict";

function csrfToken() {
  const meta = document.querySelector('meta[name="csrf-token"]');
  return meta ? meta.content : "";
}

// A spend's timeline refreshes itself until the spend reaches a final state.
function followTimeline(box) {
  const url = box.dataset.live;
  const ended = ["rejected", "cancelled", "replaced", "conflicted"];
  async function poll() {
    const current = box.querySelector(".timeline");
    if (current && (ended.includes(current.dataset.state) ||
        (current.dataset.state === "confirmed" && Number(current.dataset.confirmations) >= 6))) return;
    try {
      const response = await fetch(url, { credentials: "same-origin", headers: { "accept": "text/html" } });
      if (response.ok) {
        const html = await response.text();
        const fresh = new DOMParser().parseFromString(html, "text/html").querySelector(".timeline");
        if (fresh && current && (fresh.dataset.state !== current.dataset.state ||
            fresh.dataset.signatures !== current.dataset.signatures ||
            fresh.dataset.confirmations !== current.dataset.confirmations ||
            fresh.querySelectorAll("li").length !== current.querySelectorAll("li").length)) {
          current.replaceWith(fresh);
          if (fresh.dataset.state !== current.dataset.state) {
            // the actions offered depend on the state: show them (without repeating an old message)
            window.location.replace(window.location.pathname);
            return;
          }
        }
      }
    } catch (e) { /* the server restarts or the network blips: try again */ }
    setTimeout(poll, 2000);
  }
  setTimeout(poll, 2000);
}

// An animated QR: show one frame after another.
function animateQr(figure) {
  const frames = figure.querySelectorAll("img");
  if (frames.length < 2) return;
  let shown = 0;
  setInterval(() => {
    frames[shown].hidden = true;
    shown = (shown + 1) % frames.length;
    frames[shown].hidden = false;
  }, Number(figure.dataset.animate) || 250);
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("[data-live]").forEach(followTimeline);
  document.querySelectorAll("figure.qr[data-animate]").forEach(animateQr);
  document.querySelectorAll("select[data-autosubmit]").forEach((select) =>
    select.addEventListener("change", () => select.form.submit()));
  document.querySelectorAll("[data-add-destination]").forEach((button) =>
    button.addEventListener("click", () => {
      const list = document.getElementById("destinations");
      const row = list.querySelector(".destination").cloneNode(true);
      row.querySelectorAll("input").forEach((input) => { input.value = ""; });
      list.appendChild(row);
    }));
});
