// The dashboard's pages: plain DOM, no third-party code (the Content-Security-Policy allows
// only this script). Every text from the server goes in through textContent, never HTML.
"use strict";
const state = { me: null, offset: 0, limit: 50, total: 0, source: null };
const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k.startsWith("on")) node.addEventListener(k.slice(2), v); else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

async function api(path, body) {
  const init = { credentials: "same-origin", headers: {} };
  if (body !== undefined) {
    init.method = "POST";
    init.headers["Content-Type"] = "application/json";
    if (state.me) init.headers["X-CSRF-Token"] = state.me.csrf;
    init.body = JSON.stringify(body);
  }
  const res = await fetch(path, init);
  if (res.status === 401 && path !== "/api/login") { showLogin(); throw new Error("signed out"); }
  if (!res.ok) throw new Error((await res.json().catch(() => ({}))).detail || res.statusText);
  return res.json();
}

function showLogin() {
  for (const id of ["risk", "rm"]) $(id).hidden = true;
  $("login").hidden = false; $("logout").hidden = true; $("who").textContent = "";
  if (state.source) { state.source.close(); state.source = null; }
}

async function start() {
  try { state.me = await api("/api/me"); } catch { showLogin(); return; }
  $("login").hidden = true; $("logout").hidden = false;
  $("who").textContent = `${state.me.username} (${state.me.role}${state.me.rm_id ? " " + state.me.rm_id : ""})`;
  if (state.me.role === "rm") { $("rm").hidden = false; await loadRM(); }
  else { $("risk").hidden = false; await loadQueue(); }
  await loadPlots();
  listen();
}

// -- risk view ---------------------------------------------------------------------------
function filters() {
  const q = new URLSearchParams({ offset: state.offset, limit: state.limit, status: $("f-status").value });
  if ($("f-type").value) q.set("type", $("f-type").value);
  if ($("f-severity").value) q.set("severity", $("f-severity").value);
  return q;
}

function matches(a) {
  const s = $("f-status").value, t = $("f-type").value, v = $("f-severity").value;
  const statusOk = s === "all" || (s === "active" ? !a.status.startsWith("closed") : a.status === s);
  return statusOk && (!t || a.type === t) && (!v || a.severity === v);
}

function row(a) {
  return el("tr", { "data-ref": a.ref, "data-customer": a.customer_id, onclick: () => openAlert(a.ref) },
    el("td", {}, a.event_ts), el("td", {}, a.type), el("td", { class: `sev-${a.severity}` }, a.severity),
    el("td", {}, a.score.toFixed(2)), el("td", {}, a.customer_id), el("td", {}, a.rm_id || ""),
    el("td", { class: "status" }, a.status + (a.assignee ? ` (${a.assignee})` : "")));
}

async function loadQueue() {
  const page = await api("/api/alerts?" + filters());
  state.total = page.total;
  $("queue-body").replaceChildren(...page.items.map(row));
  pageInfo();
}

function pageInfo() {
  const end = Math.min(state.offset + state.limit, state.total);
  $("page-info").textContent = `${state.total ? state.offset + 1 : 0}-${end} of ${state.total}`;
  $("prev").disabled = state.offset === 0; $("next").disabled = end >= state.total;
}

function liveAlert(a) {
  const old = document.querySelector(`#queue-body tr[data-ref="${a.ref}"]`);
  if (old) {
    if (matches(a)) old.replaceWith(row(a)); else { old.remove(); state.total -= 1; pageInfo(); }
  } else if (matches(a) && state.offset === 0) {
    const r = row(a); r.classList.add("new");
    $("queue-body").prepend(r);
    while ($("queue-body").children.length > state.limit) $("queue-body").lastChild.remove();
    state.total += 1; pageInfo();
  }
  if (!$("detail").hidden && $("detail").dataset.ref === a.ref) openAlert(a.ref);
}

async function openAlert(ref) {
  const a = await api(`/api/alerts/${ref}`);
  const d = $("detail"); d.dataset.ref = ref; d.hidden = false;
  const act = (path, body) => async () => {
    try { await api(`/api/alerts/${ref}/${path}`, body); await openAlert(ref); }
    catch (e) { d.prepend(el("p", { class: "error" }, e.message)); }
  };
  const analyst = state.me.role === "risk_analyst";
  const closed = a.status.startsWith("closed");  // a closed alert takes no further action
  const c = a.customer;
  d.replaceChildren(
    el("h2", {}, `${a.type} — ${a.severity} — score ${a.score.toFixed(2)}`),
    el("p", {}, `customer ${a.customer_id} · RM ${a.rm_id || "-"} · status `, el("b", { id: "detail-status" }, a.status),
      ` · revision ${a.revision} · event ${a.alert.event_id} at ${a.event_ts}`),
    el("h3", {}, "Reasons"),
    el("ul", { class: "reasons" }, ...a.alert.reasons.map((r) => el("li", {}, `${r.text} (weight ${r.weight})`))),
    el("p", {}, `customer fraud score ${fmt(c.fraud_score)} · fraud risk ${fmt(c.fraud_risk)} · churn ${fmt(c.churn_score)} · open alert groups ${c.open_groups}`),
    el("h3", {}, "Timeline"),
    timeline(c.timeline),
    analyst && !closed ? el("div", { class: "actions" },
      el("button", { id: "act-ack", onclick: act("acknowledge", {}) }, "Acknowledge"),
      el("button", { id: "act-assign", onclick: act("assign", { assignee: state.me.username }) }, "Assign to me"),
      el("button", { id: "act-snooze", onclick: act("snooze", { hours: 24 }) }, "Snooze 24 h"),
      el("button", { id: "act-fraud", onclick: act("close", { label: "fraud" }) }, "Close: confirmed fraud"),
      el("button", { id: "act-legit", onclick: act("close", { label: "legit" }) }, "Close: false positive"))
      : el("p", {}, closed ? "closed" : "read-only"));
}

// A customer's timeline, newest first: the events the engine received (with [redis]
// recent_events) between the alerts and prompts it decided, each kind styled apart.
function timeline(items) {
  return el("ul", { class: "timeline" }, ...items.map((t) => el("li", { class: `tl-${t.kind}`, "data-kind": t.kind,
    "data-event": t.event_id }, el("span", { class: "ts" }, t.ts), " ", t.what)));
}

const fmt = (x) => (x === null || x === undefined ? "-" : Number(x).toFixed(2));

// -- RM view -----------------------------------------------------------------------------
function promptCard(p) {
  const answer = (what) => async () => {
    try { await api(`/api/rm/prompts/${p.prompt_id}/answer`, { answer: what }); await loadRM(); await loadPlots(); }
    catch (e) { alert(e.message); }
  };
  const buttons = p.status === "new"
    ? [el("button", { class: "accept", onclick: answer("accepted") }, "Accept"),
       el("button", { class: "dismiss", onclick: answer("dismissed") }, "Dismiss")]
    : [el("button", { class: "convert", onclick: answer("converted") }, "Converted"),
       el("button", { class: "dismiss", onclick: answer("dismissed") }, "Dismiss")];
  return el("li", { "data-prompt": p.prompt_id, "data-customer": p.customer_id },
    el("b", {}, p.action), ` ${p.product_id || ""} for `,
    el("a", { href: "#", onclick: (e) => { e.preventDefault(); openCustomer(p.cref); } }, p.customer_id),
    el("div", {}, `score ${p.score.toFixed(2)} · ${p.trigger} · until ${p.expires_at}`),
    el("div", {}, p.reasons.map((r) => r.text).join("; ")), el("div", {}, ...buttons));
}

async function loadRM() {
  const [fresh, accepted, churn] = await Promise.all([
    api("/api/rm/prompts?which=new&limit=50"), api("/api/rm/prompts?which=accepted&limit=50"), api("/api/rm/churn?limit=50")]);
  $("prompts").replaceChildren(...fresh.items.map(promptCard));
  $("prompt-count").textContent = `(${fresh.total})`;
  $("accepted").replaceChildren(...accepted.items.map(promptCard));
  $("churn").replaceChildren(...churn.items.map((a) => el("li", { "data-ref": a.ref },
    el("b", {}, `churn risk ${a.score.toFixed(2)}`), " ",
    el("a", { href: "#", onclick: (e) => { e.preventDefault(); openCustomer(a.cref); } }, a.customer_id),
    el("div", {}, a.alert.reasons.map((r) => r.text).join("; ")))));
}

async function openCustomer(cref) {
  const c = await api(`/api/customers/${cref}`);
  const d = $("rm-detail"); d.hidden = false;
  d.replaceChildren(el("h2", {}, `customer ${c.customer_id}`), el("p", {}, `churn score ${fmt(c.churn_score)}`),
    timeline(c.timeline));
}

// -- plots -------------------------------------------------------------------------------
function bars(svg, values, labels) {
  const max = Math.max(1, ...values), w = 480 / Math.max(values.length, 1);
  svg.replaceChildren(...values.flatMap((v, i) => {
    const h = (v / max) * 95, ns = "http://www.w3.org/2000/svg";
    const r = document.createElementNS(ns, "rect");
    r.setAttribute("x", i * w + 1); r.setAttribute("y", 100 - h); r.setAttribute("width", Math.max(w - 2, 1)); r.setAttribute("height", h);
    const t = document.createElementNS(ns, "text");
    t.setAttribute("x", i * w + 1); t.setAttribute("y", 115); t.textContent = labels[i] || "";
    const n = document.createElementNS(ns, "title"); n.textContent = `${labels[i] || ""}: ${v}`; r.append(n);
    return [r, t];
  }));
}

async function loadPlots() {
  const s = await api("/api/stats");
  if (s.volume) {
    bars($("plot-volume"), s.volume.map((v) => v.alerts), s.volume.map((v, i) => (i % 6 === 0 ? v.hour.slice(5, 13) : "")));
    bars($("plot-scores"), s.scores.map((b) => b.alerts), s.scores.map((b) => b.from.toFixed(1)));
    await loadModels();
  }
  if (s.rm) {
    const r = s.rm;
    bars($("plot-rm"), [r.prompts, r.accepted, r.dismissed, r.converted],
      ["prompts", "accepted", "dismissed", `converted (${(100 * r.conversion_rate).toFixed(1)} %)`]);
  }
}

async function loadModels() {
  const m = await api("/api/models");
  const fmt = (v) => (v === null || v === undefined ? "n/a" : v.toFixed(3));
  const report = m.report;
  $("models-as-of").textContent = report ? `as of ${report.as_of}` : "(no evaluation yet)";
  $("models-body").replaceChildren(...(report ? report.models : []).map((f) => el("tr", { "data-model": f.model },
    el("td", {}, f.model), el("td", {}, f.version), el("td", {}, fmt(f.auc)), el("td", {}, fmt(f.ap)),
    el("td", {}, f.labels), el("td", {}, f.frauds), el("td", {}, f.model === report.champion ? "champion" : "challenger"))));
  const c = m.change;
  $("models-change").textContent = c ? `${c.as_of}: ${c.from_model} -> ${c.to_model} (${c.action}): ${c.reason}` : "";
}

// -- live updates ------------------------------------------------------------------------
function listen() {
  const source = new EventSource("/api/events");
  state.source = source;
  source.onopen = () => $("live").classList.add("on");
  source.onerror = () => {
    $("live").classList.remove("on");
    // The server ends the stream when the session ends; the reconnection then gets a 401 and
    // the browser gives up: ask who is signed in, which shows the sign-in form on a 401.
    if (source.readyState === EventSource.CLOSED && state.source === source) api("/api/me").catch(() => {});
  };
  let plotDue = 0;
  const plotsSoon = () => { if (Date.now() > plotDue) { plotDue = Date.now() + 2000; setTimeout(loadPlots, 2000); } };
  source.addEventListener("alert", (e) => {
    const a = JSON.parse(e.data);
    if (state.me.role === "rm") loadRM(); else liveAlert(a);
    plotsSoon();
  });
  source.addEventListener("prompt", (e) => {
    const p = JSON.parse(e.data);
    if (p.status === "new" && !document.querySelector(`#prompts li[data-prompt="${p.prompt_id}"]`)) {
      $("prompts").prepend(promptCard(p));
    }
    plotsSoon();
  });
}

document.addEventListener("DOMContentLoaded", () => {
  $("login-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    try {
      state.me = await api("/api/login", { username: $("username").value, password: $("password").value });
      $("password").value = ""; $("login-error").textContent = "";
      await start();
    } catch (err) { $("login-error").textContent = err.message; }
  });
  $("logout").addEventListener("click", async () => { await api("/api/logout", {}); state.me = null; showLogin(); });
  for (const id of ["f-status", "f-type", "f-severity"]) $(id).addEventListener("change", () => { state.offset = 0; loadQueue(); });
  $("prev").addEventListener("click", () => { state.offset = Math.max(0, state.offset - state.limit); loadQueue(); });
  $("next").addEventListener("click", () => { state.offset += state.limit; loadQueue(); });
  start();
});
