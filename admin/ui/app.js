// qtunnel admin page: the dashboard (GET /dashboard/events) and, on a
// client with its inspector on, the request inspector (/inspect/...).
// Every call carries the admin token, kept for this tab only.
"use strict";

const $ = (sel) => document.querySelector(sel);
const el = (tag, attrs = {}, ...kids) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v; else if (k.startsWith("on")) e.addEventListener(k.slice(2), v); else e.setAttribute(k, v);
  }
  for (const k of kids) e.append(k instanceof Node ? k : document.createTextNode(k ?? ""));
  return e;
};

let token = sessionStorage.getItem("qtunnel-token") || "";
const headers = () => (token ? { Authorization: "Bearer " + token } : {});

class Refused extends Error {}

async function api(path, opts = {}) {
  const r = await fetch(path, { ...opts, headers: { ...headers(), ...(opts.headers || {}) } });
  if (r.status === 401 || r.status === 429) throw new Refused(await r.text());
  if (!r.ok) {
    let msg = await r.text();
    try { msg = JSON.parse(msg).error || msg; } catch (_) { /* plain text */ }
    throw new Error(r.status + " " + msg);
  }
  return r.json();
}

// sse reads a server-sent event stream with fetch (EventSource cannot send
// the token), calling on(event, data) for each event, until it ends.
async function sse(path, on, signal) {
  const r = await fetch(path, { headers: headers(), signal });
  if (r.status === 401 || r.status === 429) throw new Refused(await r.text());
  if (!r.ok) throw new Error(r.status + " " + (await r.text()));
  const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += value;
    let i;
    while ((i = buf.indexOf("\n\n")) >= 0) {
      const block = buf.slice(0, i);
      buf = buf.slice(i + 2);
      let event = "message", data = "";
      for (const line of block.split("\n")) {
        if (line.startsWith("event: ")) event = line.slice(7);
        else if (line.startsWith("data: ")) data += line.slice(6);
      }
      if (data) on(event, JSON.parse(data));
    }
  }
}

function showLogin(msg) {
  $("#login").hidden = false;
  $("#dashboard").hidden = $("#inspect").hidden = true;
  $("#login-error").textContent = msg || "";
  setLive("off", "locked");
}

function setLive(cls, text) {
  const p = $("#live");
  p.className = "pill " + cls;
  p.textContent = text;
}

$("#login").addEventListener("submit", (ev) => {
  ev.preventDefault();
  token = $("#token").value.trim();
  sessionStorage.setItem("qtunnel-token", token);
  start();
});

// ---- dashboard ----

let inspectorOn = false;

function fmtDur(ns) {
  if (!ns) return "";
  if (ns < 1e6) return (ns / 1e3).toFixed(0) + " µs";
  if (ns < 1e9) return (ns / 1e6).toFixed(1) + " ms";
  return (ns / 1e9).toFixed(2) + " s";
}

function since(t) {
  if (!t) return "";
  const d = new Date(t);
  return d.toLocaleString();
}

function matchOf(r) {
  if (r.direction === "forward") return "listen " + r.listen;
  if (r.protocol === "tcp") return "port " + r.listen;
  return (r.host || "") + (r.path_prefix || "/");
}

function render(doc) {
  $("#role").textContent = doc.role;
  document.title = "qtunnel " + doc.role;
  const v = doc.view || {};
  const traffic = Object.fromEntries((doc.traffic || []).map((t) => [t.rule, t]));
  $("#version").textContent = v.version ? "version " + v.version : "";

  $("#clients-section").hidden = doc.role !== "server";
  $("#conn-section").hidden = doc.role !== "client";
  if (doc.role === "server") {
    const tb = $("#clients tbody");
    tb.replaceChildren(...(v.sessions || []).map((s) => el("tr", { "data-client": s.client },
      el("td", {}, s.client),
      el("td", { class: s.connected ? "yes" : "no" }, s.connected ? "yes" : "no"),
      el("td", {}, since(s.created)),
      el("td", {}, s.rtt || ""),
      el("td", { class: "num" }, s.applied_version ? String(s.applied_version) : ""),
      el("td", { class: "error" }, s.refused_error || ""))));
  } else {
    const c = doc.connections && doc.connections[0];
    const parts = [v.connected ? "Connected to " + v.server : "Not connected (server " + v.server + ")"];
    if (c) parts.push("RTT " + c.rtt, "packets lost " + c.packets_lost);
    if (v.refused_error) parts.push("rules refused: " + v.refused_error);
    for (const d of v.declared || []) parts.push(d.error ? "declared " + d.name + " refused: " + d.error : "declared " + d.name + ": " + (d.urls || []).join(" "));
    $("#conn").textContent = parts.join(" · ");
    $("#conn").className = v.connected ? "" : "error";
  }

  const rows = (v.rules || []).map((r) => {
    const t = traffic[r.id] || {};
    return el("tr", { "data-rule": r.id },
      el("td", {}, r.id),
      el("td", {}, r.client),
      el("td", {}, r.direction),
      el("td", {}, matchOf(r)),
      el("td", {}, r.upstream || (r.upstreams || []).join(", ")),
      el("td", {}, (doc.sources && doc.sources[r.id]) || (r.id.startsWith(r.client + ".") ? "declared" : "")),
      el("td", { class: "num" }, t.rate !== undefined ? t.rate.toFixed(1) : "0.0"),
      el("td", { class: "num" }, String(t.requests || 0)),
      el("td", { class: "num" + (t.errors ? " no" : "") }, String(t.errors || 0)),
      el("td", { class: "num" }, fmtDur(t.p99_ns)),
      el("td", {}, t.breaker || ""));
  });
  $("#rules tbody").replaceChildren(...rows);
  $("#errors").replaceChildren(...(doc.recent_errors || []).map((e) =>
    el("li", {}, new Date(e.time).toLocaleTimeString() + " " + e.level + " " + e.message + (e.attrs ? " " + e.attrs : ""))));
  if (!(doc.recent_errors || []).length) $("#errors").replaceChildren(el("li", { class: "muted" }, "none"));

  inspectorOn = !!doc.inspector;
  $("#nav-inspect").hidden = !inspectorOn;
}

let liveCtl = null;

async function liveDashboard() {
  if (liveCtl) liveCtl.abort();
  liveCtl = new AbortController();
  const ctl = liveCtl;
  for (;;) {
    try {
      setLive("on", "live");
      await sse("/dashboard/events", (ev, data) => { if (ev === "dashboard") render(data); }, ctl.signal);
    } catch (e) {
      if (e instanceof Refused) { showLogin("The admin listener refused this token."); return; }
      if (ctl.signal.aborted) return;
    }
    setLive("off", "reconnecting");
    await new Promise((r) => setTimeout(r, 2000));
    if (ctl.signal.aborted) return;
  }
}

// ---- inspector ----

const entries = new Map();
let selected = 0;
let inspectCtl = null;

function statusClass(s) { return s >= 500 || !s ? "no" : s >= 400 ? "" : "yes"; }

function addEntry(e, atTop) {
  entries.set(e.seq, e);
  const li = el("li", { "data-seq": String(e.seq), onclick: () => select(e.seq) },
    el("span", { class: "status " + statusClass(e.status) }, e.status ? String(e.status) : "—"),
    el("span", {}, e.method),
    el("span", { class: "uri", title: e.host + e.uri }, e.uri),
    el("span", { class: "muted" }, e.rule + (e.replay ? " (replay)" : "")));
  const list = $("#requests");
  if (atTop) list.prepend(li); else list.append(li);
}

function headerTable(h) {
  const rows = Object.entries(h || {}).sort().flatMap(([k, vs]) => vs.map((v) => el("tr", {}, el("th", {}, k), el("td", {}, v))));
  return el("div", { class: "scroll" }, el("table", {}, el("tbody", {}, ...rows)));
}

function bodyView(b) {
  if (!b || !b.size) return el("p", { class: "muted" }, "no body");
  let text = "";
  try { text = new TextDecoder().decode(Uint8Array.from(atob(b.preview || ""), (c) => c.charCodeAt(0))); } catch (_) { text = "(binary)"; }
  return el("div", {}, el("p", { class: "muted" }, b.size + " bytes" + (b.truncated ? ", first " + text.length + " shown" : "")), el("pre", {}, text));
}

function select(seq) {
  selected = seq;
  for (const li of document.querySelectorAll("#requests li")) li.classList.toggle("sel", li.dataset.seq === String(seq));
  const e = entries.get(seq);
  if (!e) return;
  const method = el("input", { value: e.method, "aria-label": "method" });
  const uri = el("input", { value: e.uri, "aria-label": "path" });
  const body = el("textarea", { "aria-label": "body" });
  let reqText = "";
  try { reqText = new TextDecoder().decode(Uint8Array.from(atob(e.request_body.preview || ""), (c) => c.charCodeAt(0))); } catch (_) { /* binary */ }
  body.value = reqText;
  const result = el("p", { id: "replay-result", role: "status" });
  const replay = async (edited) => {
    const edit = edited ? { method: method.value, uri: uri.value, body: body.value } : {};
    try {
      const out = await api("/inspect/requests/" + seq + "/replay", { method: "POST", body: JSON.stringify(edit), headers: { "Content-Type": "application/json" } });
      result.textContent = "Replayed: " + out.status + " in " + fmtDur(out.duration_ns);
      result.className = "";
    } catch (err) {
      result.textContent = "Replay failed: " + err.message;
      result.className = "error";
    }
  };
  $("#detail").replaceChildren(
    el("h2", {}, e.method + " " + e.host + e.uri),
    el("p", { class: "muted" }, "rule " + e.rule + " · " + new Date(e.time).toLocaleString() + " · " + fmtDur(e.duration_ns) + " · request id " + (e.request_id || "")),
    e.error ? el("p", { class: "error" }, e.error) : "",
    el("div", { class: "bar" }, el("button", { id: "replay", onclick: () => replay(false) }, "Replay"), result),
    el("h2", {}, "Stages"),
    el("div", { class: "scroll" }, el("table", {}, el("tbody", {}, ...(e.stages || []).map((s) => el("tr", {}, el("th", {}, s.stage), el("td", { class: "num" }, fmtDur(s.took_ns))))))),
    el("h2", {}, "Request header"), headerTable(e.request_header),
    el("h2", {}, "Request body"), bodyView(e.request_body),
    el("h2", {}, "Response " + (e.status || "")), headerTable(e.response_header),
    el("h2", {}, "Response body"), bodyView(e.response_body),
    el("h2", {}, "Replay edited"),
    el("label", {}, "Method ", method), el("label", {}, "Path ", uri), el("label", {}, "Body ", body),
    el("div", { class: "bar" }, el("button", { id: "replay-edited", onclick: () => replay(true) }, "Replay edited")));
}

async function liveInspector() {
  if (inspectCtl) return;
  inspectCtl = new AbortController();
  const ctl = inspectCtl;
  for (;;) {
    try {
      const list = await api("/inspect/requests");
      entries.clear();
      $("#requests").replaceChildren();
      for (const e of list) addEntry(e, false);
      await sse("/inspect/events", (ev, e) => { if (ev === "request") addEntry(e, true); }, ctl.signal);
    } catch (e) {
      if (e instanceof Refused) { showLogin("The admin listener refused this token."); return; }
      if (ctl.signal.aborted) return;
    }
    await new Promise((r) => setTimeout(r, 2000));
    if (ctl.signal.aborted) return;
  }
}

// ---- pages ----

function route() {
  const page = location.hash === "#inspect" ? "inspect" : "dashboard";
  $("#dashboard").hidden = page !== "dashboard";
  $("#inspect").hidden = page !== "inspect";
  $("#nav-dashboard").classList.toggle("active", page === "dashboard");
  $("#nav-inspect").classList.toggle("active", page === "inspect");
  if (page === "inspect") liveInspector();
}

async function start() {
  try {
    const doc = await api("/dashboard");
    $("#login").hidden = true;
    render(doc);
    route();
    liveDashboard();
  } catch (e) {
    if (e instanceof Refused) showLogin(token ? "The admin listener refused this token." : "");
    else setLive("off", e.message);
  }
}

window.addEventListener("hashchange", route);
start();
