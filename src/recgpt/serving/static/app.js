// recgpt serve: send an event from a user's page, then wait for the nearline refresh and show the new list.
// Plain JavaScript, no build step, nothing loaded from elsewhere. Text from the server is set with
// textContent; the list itself is the server's own (escaped) fragment from /ui/users/{id}/list.
"use strict";
(function () {
  const KEY_STORE = "recgpt.apiKey";
  const POLL_MS = 1000;
  const POLL_LIMIT = 90; // polls before giving up (the worker may be off, or the LLM slow)

  const form = document.getElementById("event-form");
  const section = document.getElementById("list");
  if (!form || !section) return;
  const user = section.dataset.user;
  const k = section.dataset.k || "10";
  const keyInput = document.getElementById("ev-key");
  const button = document.getElementById("ev-send");
  const result = document.getElementById("ev-result");
  const enc = encodeURIComponent;

  keyInput.value = localStorage.getItem(KEY_STORE) || "";
  keyInput.addEventListener("input", () => localStorage.setItem(KEY_STORE, keyInput.value));

  function say(kind, text) {
    result.hidden = false;
    result.className = "result " + kind;
    result.textContent = text;
  }

  function status(kind, text) {
    const el = document.getElementById("list-status");
    if (!el) return;
    el.className = "status " + kind;
    el.textContent = text;
  }

  function sleep(ms) {
    return new Promise((resolve) => setTimeout(resolve, ms));
  }

  // FastAPI's error bodies: {"detail": "text"} or {"detail": [{"loc": [...], "msg": "..."}]}
  function reason(body) {
    if (!body || body.detail === undefined) return "";
    if (typeof body.detail === "string") return body.detail;
    if (Array.isArray(body.detail)) {
      return body.detail
        .map((d) => (d.loc || []).filter((p) => p !== "body").join(".") + ": " + d.msg)
        .join("; ");
    }
    return JSON.stringify(body.detail);
  }

  function newEvent() {
    const now = Date.now();
    const ev = {
      event_id: now * 1000 + Math.floor(Math.random() * 1000), // client-chosen idempotency key
      user_id: user,
      item_id: form.item_id.value.trim(),
      behavior: form.behavior.value,
      timestamp: Math.floor(now / 1000),
    };
    if (form.value.value !== "") ev.value = Number(form.value.value);
    return ev;
  }

  async function send(ev) {
    const response = await fetch("/v1/events", {
      method: "POST",
      headers: { "Content-Type": "application/json", "X-API-Key": keyInput.value },
      body: JSON.stringify({ events: [ev] }),
    });
    let body = null;
    try {
      body = await response.json();
    } catch (e) {
      body = null;
    }
    return { status: response.status, body: body };
  }

  async function latestVersion() {
    const response = await fetch("/v1/users/" + enc(user) + "/recommendations?k=" + enc(k));
    if (!response.ok) return null;
    const body = await response.json();
    return body.version;
  }

  async function redraw() {
    const before = new Set(Array.from(section.querySelectorAll("tr[data-item]"), (tr) => tr.dataset.item));
    const response = await fetch("/ui/users/" + enc(user) + "/list?k=" + enc(k));
    if (!response.ok) throw new Error("list fragment: HTTP " + response.status);
    section.innerHTML = await response.text();
    section.dataset.version = response.headers.get("X-List-Version") || "";
    section.querySelectorAll("tr[data-item]").forEach((tr) => {
      if (!before.has(tr.dataset.item)) tr.classList.add("new");
    });
  }

  async function redrawEvents() {
    const box = document.getElementById("events");
    if (!box) return;
    const response = await fetch("/ui/users/" + enc(user) + "/events");
    if (response.ok) box.innerHTML = await response.text();
  }

  function newer(version, seen) {
    if (version === null || version === undefined) return false;
    if (seen === "") return true;
    return Number(version) > Number(seen);
  }

  async function waitForRefresh() {
    const seen = section.dataset.version || "";
    const started = Date.now();
    status("busy", "refreshing…");
    for (let i = 0; i < POLL_LIMIT; i++) {
      await sleep(POLL_MS);
      let version = null;
      try {
        version = await latestVersion();
      } catch (e) {
        version = null;
      }
      if (newer(version, seen)) {
        await redraw();
        const waited = ((Date.now() - started) / 1000).toFixed(1);
        status("done", "new version " + section.dataset.version + " landed " + waited + " s after the event was accepted");
        return;
      }
    }
    status("fail", "no new list version after " + (POLL_LIMIT * POLL_MS) / 1000 + " s — is the nearline worker running?");
  }

  // an item id in the list fills the form's item field (the list is redrawn, so listen on its section)
  section.addEventListener("click", (e) => {
    const pick = e.target.closest("a.pick");
    if (!pick) return;
    e.preventDefault();
    form.item_id.value = pick.dataset.item;
    form.behavior.focus();
    form.scrollIntoView({ behavior: "smooth", block: "center" });
  });

  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const ev = newEvent();
    button.disabled = true;
    say("", "Sending event " + ev.event_id + "…");
    try {
      const answer = await send(ev);
      if (answer.status === 202) {
        const b = answer.body || {};
        say("ok", "Event " + ev.event_id + " (" + ev.behavior + " " + ev.item_id + ") accepted: HTTP 202, " +
          b.accepted + " new, " + b.duplicates + " duplicate.");
        await redrawEvents();
        await waitForRefresh();
      } else {
        say("fail", "HTTP " + answer.status + ": " + (reason(answer.body) || "the server refused the event"));
      }
    } catch (err) {
      say("fail", "Could not reach the server: " + err);
    } finally {
      button.disabled = false;
    }
  });
})();
