// The dashboard's pages: plain DOM, no third-party code (the Content-Security-Policy allows
// only this script). Every text from the server goes in through textContent, never HTML.
"use strict";
const state = { me: null, offset: 0, limit: 50, total: 0, source: null };
const $ = (id) => document.getElementById(id);

// -- language ----------------------------------------------------------------------------
// The server's [display] locale and time zone (GET /api/display). Texts are keyed by their
// English; the data's own codes (types, severities, statuses) are translated as labels.
// Reasons and timeline lines come from the server already in the locale.
const display = { locale: "en", timezone: "UTC" };
const I18N = {
  "zh-CN": {
    "CRM risk dashboard": "CRM 风险看板", "CRM stream engine": "CRM 实时事件引擎", "Sign in": "登录",
    "Sign out": "退出", "User": "用户名", "Password": "密码", "Alerts per hour (event time)": "每小时告警数（事件时间）",
    "Alert scores": "告警评分分布", "Fraud models (prequential, on the same delayed labels)": "欺诈模型（基于相同延迟标签的前序评估）",
    "model": "模型", "version": "版本", "labels": "标签数", "frauds": "欺诈数", "role": "角色", "Status": "状态",
    "Type": "类型", "Severity": "严重程度", "live": "实时", "time": "时间", "type": "类型", "severity": "严重程度",
    "score": "评分", "customer": "客户", "RM": "客户经理", "status": "状态", "Previous": "上一页", "Next": "下一页",
    "My prompts": "我的行动建议", "Prompts waiting for an answer": "待处理的行动建议",
    "Accepted (waiting for conversion)": "已接受（等待转化）", "Churn warnings": "流失预警",
    "Complaint escalations": "投诉升级",
    "active": "未结案", "all": "全部", "any": "不限", "open": "待处理", "acknowledged": "已确认", "assigned": "已分派",
    "snoozed": "已暂停", "closed_fraud": "结案：确认欺诈", "closed_legit": "结案：误报",
    "suspicious_transaction": "可疑交易", "account_takeover": "账户盗用", "aml_pattern": "反洗钱可疑模式",
    "churn_risk": "流失风险", "complaint_escalation": "投诉升级", "low": "低", "medium": "中", "high": "高", "critical": "严重",
    "of": "共", "Reasons": "告警原因", "Timeline": "时间线", "weight": "权重", "revision": "版本", "event": "事件",
    "at": "时间", "customer fraud score": "客户欺诈评分", "fraud risk": "欺诈风险", "churn": "流失评分",
    "open alert groups": "未结告警组", "Acknowledge": "确认", "Assign to me": "分派给我", "Snooze 24 h": "暂停 24 小时",
    "Close: confirmed fraud": "结案：确认欺诈", "Close: false positive": "结案：误报", "closed": "已结案",
    "read-only": "只读", "Accept": "接受", "Dismiss": "忽略", "Converted": "已转化", "for": "客户", "until": "有效期至",
    "churn risk": "流失风险", "churn score": "流失评分", "prompts": "建议", "accepted": "已接受", "dismissed": "已忽略",
    "converted": "已转化", "as of": "截至", "(no evaluation yet)": "（尚无评估）", "champion": "主模型",
    "challenger": "挑战模型", "n/a": "无", "risk_analyst": "风险分析师", "rm": "客户经理", "admin": "管理员",
    "maturity": "产品到期", "large_credit": "大额入账", "product_view": "浏览产品",
    "login_after_absence": "久未登录后登录", "churn_rising": "流失风险上升", "new": "新建",
    "Cases": "案件", "Case": "案件", "opened": "立案时间", "alerts": "告警数", "owner": "负责人", "proposal": "拟定结论",
    "proposed": "待复核", "decision": "结论", "by": "经办人", "fraud": "确认欺诈",
    "report": "可疑交易报告", "no_action": "无需处理", "Alert groups": "告警组", "History": "办理记录",
    "Add note": "添加备注", "Propose: fraud": "拟定：确认欺诈", "Propose: report": "拟定：上报可疑交易",
    "Propose: no action": "拟定：无需处理", "Approve": "复核通过", "Reject": "退回",
    "Waiting for another analyst to approve": "等待另一位分析师复核", "Report (CSV)": "报告（CSV）",
    "Report (print)": "报告（打印版）", "log:opened": "立案", "log:joined": "告警并入", "log:assigned": "分派",
    "log:noted": "备注", "log:proposed": "拟定结论", "log:rejected": "退回", "log:approved": "复核通过",
    "log:proposal_withdrawn": "拟定结论撤回",
    "Rule back-test": "规则回测", "Changes": "规则改动", "Run": "运行", "started": "开始时间", "running": "运行中",
    "done": "已完成", "failed": "失败", "alerts (current / changed)": "告警数（现行 / 改动后）",
    "precision (current / changed)": "精确率（现行 / 改动后）", "recall (current / changed)": "召回率（现行 / 改动后）",
    "fairness_drift": "推荐公平性偏移", "Fair recommendations (next-best action): latest drift per dimension": "公平推荐（下一步最佳行动）：各维度最近一次偏移",
    "(no fairness drift)": "（无公平性偏移）", "window until": "窗口截至", "dimension": "维度", "group": "群体",
    "metric": "指标", "rate": "比率", "best-served": "最优群体", "ratio": "比值", "threshold": "阈值",
    "segment": "客户分层", "age_band": "年龄段", "gender": "性别", "city_tier": "城市等级", "exposure": "触达率",
    "acceptance": "采纳率", "conversion": "转化率",
  },
};
const t = (text) => (I18N[display.locale] || {})[text] || text;

// A time of the data (UTC, RFC 3339) as people read it: in English and UTC as it is, else
// in the display time zone.
function when(ts) {
  if (display.locale === "en" && display.timezone === "UTC") return ts;
  const d = new Date(ts);
  if (Number.isNaN(d.getTime())) return ts;
  return new Intl.DateTimeFormat(display.locale, { timeZone: display.timezone, year: "numeric", month: "2-digit",
    day: "2-digit", hour: "2-digit", minute: "2-digit", second: "2-digit", hourCycle: "h23" }).format(d);
}

async function loadDisplay() {
  try { Object.assign(display, await (await fetch("/api/display", { credentials: "same-origin" })).json()); }
  catch { /* English and UTC */ }
  document.documentElement.lang = display.locale;
  document.title = t(document.title);
  for (const node of document.querySelectorAll("[data-i18n]")) node.textContent = t(node.textContent.trim());
  for (const option of document.querySelectorAll("select option")) option.textContent = t(option.textContent);
}

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
  $("who").textContent = `${state.me.username} (${t(state.me.role)}${state.me.rm_id ? " " + state.me.rm_id : ""})`;
  const rm = state.me.role === "rm";
  $(rm ? "rm" : "risk").hidden = false;
  if (state.me.role === "admin") $("backtest").hidden = false;
  // Live updates first, then each panel on its own: one that fails to load (a slow or
  // refused request) leaves the others and the live stream working.
  listen();
  const loads = rm ? [loadRM] : [loadQueue, loadCases];
  if (state.me.role === "admin") loads.push(loadBacktests);
  for (const load of [...loads, loadPlots]) {
    try { await load(); } catch (e) { console.error(e); }
  }
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
    el("td", {}, when(a.event_ts)), el("td", {}, t(a.type)), el("td", { class: `sev-${a.severity}` }, t(a.severity)),
    el("td", {}, a.score.toFixed(2)), el("td", {}, a.customer_id), el("td", {}, a.rm_id || ""),
    el("td", { class: "status" }, t(a.status) + (a.assignee ? ` (${a.assignee})` : "")));
}

async function loadQueue() {
  const page = await api("/api/alerts?" + filters());
  state.total = page.total;
  $("queue-body").replaceChildren(...page.items.map(row));
  pageInfo();
}

function pageInfo() {
  const end = Math.min(state.offset + state.limit, state.total);
  $("page-info").textContent = `${state.total ? state.offset + 1 : 0}-${end} ${t("of")} ${state.total}`;
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
    el("h2", {}, `${t(a.type)} — ${t(a.severity)} — ${t("score")} ${a.score.toFixed(2)}`),
    el("p", {}, `${t("customer")} ${a.customer_id} · ${t("RM")} ${a.rm_id || "-"} · ${t("status")} `,
      el("b", { id: "detail-status", "data-status": a.status }, t(a.status)),
      ` · ${t("revision")} ${a.revision} · ${t("event")} ${a.alert.event_id} ${t("at")} ${when(a.event_ts)}`),
    el("h3", {}, t("Reasons")),
    el("ul", { class: "reasons" }, ...a.alert.reasons.map((r) => el("li", {}, `${r.text} (${t("weight")} ${r.weight})`))),
    el("p", {}, `${t("customer fraud score")} ${fmt(c.fraud_score)} · ${t("fraud risk")} ${fmt(c.fraud_risk)} · ` +
      `${t("churn")} ${fmt(c.churn_score)} · ${t("open alert groups")} ${c.open_groups}`),
    el("h3", {}, t("Timeline")),
    timeline(c.timeline),
    analyst && !closed ? el("div", { class: "actions" },
      el("button", { id: "act-ack", onclick: act("acknowledge", {}) }, t("Acknowledge")),
      el("button", { id: "act-assign", onclick: act("assign", { assignee: state.me.username }) }, t("Assign to me")),
      el("button", { id: "act-snooze", onclick: act("snooze", { hours: 24 }) }, t("Snooze 24 h")),
      el("button", { id: "act-fraud", onclick: act("close", { label: "fraud" }) }, t("Close: confirmed fraud")),
      el("button", { id: "act-legit", onclick: act("close", { label: "legit" }) }, t("Close: false positive")))
      : el("p", {}, closed ? t("closed") : t("read-only")));
}

// -- cases -------------------------------------------------------------------------------
// A customer's open fraud alerts form a case: one analyst proposes a decision, another
// approves (which closes every alert of the case) or rejects it back to open.
async function loadCases() {
  const page = await api(`/api/cases?status=${$("f-case").value}&limit=50`);
  $("case-count").textContent = `(${page.total})`;
  $("cases-body").replaceChildren(...page.items.map((c) => el("tr", { "data-case": c.id, "data-customer": c.customer_id,
    onclick: () => openCase(c.id) }, el("td", {}, when(c.opened_at)), el("td", {}, c.customer_id), el("td", {}, c.alerts),
    el("td", {}, c.owner || "-"), el("td", { class: "status" }, t(c.status)),
    el("td", {}, c.proposal ? `${t(c.proposal)} (${c.proposed_by})` : ""))));
}

// A case history entry's action, in the locale (the English is the action itself).
const logWord = (action) => { const w = t(`log:${action}`); return w === `log:${action}` ? action : w; };

async function openCase(id) {
  const c = await api(`/api/cases/${id}`);
  const d = $("case-detail"); d.dataset.case = id; d.hidden = false;
  const act = (path, body) => async () => {
    try { await api(`/api/cases/${id}/${path}`, body); await openCase(id); await loadCases(); }
    catch (e) { d.prepend(el("p", { class: "error" }, e.message)); }
  };
  const analyst = state.me.role === "risk_analyst";
  const mine = c.proposed_by === state.me.username;
  const controls = [];
  if (analyst && c.status !== "closed") {
    const note = el("textarea", { id: "case-note-text", rows: 2, cols: 60 });
    controls.push(el("div", { class: "actions" }, note,
      el("button", { id: "case-note", onclick: async () => { if (note.value.trim()) await act("notes", { text: note.value })(); } }, t("Add note")),
      el("button", { id: "case-assign", onclick: act("assign", { assignee: state.me.username }) }, t("Assign to me"))));
  }
  if (analyst && c.status === "open") {
    controls.push(el("div", { class: "actions" },
      el("button", { id: "case-propose-fraud", onclick: act("propose", { decision: "fraud" }) }, t("Propose: fraud")),
      el("button", { id: "case-propose-report", onclick: act("propose", { decision: "report" }) }, t("Propose: report")),
      el("button", { id: "case-propose-no_action", onclick: act("propose", { decision: "no_action" }) }, t("Propose: no action"))));
  }
  if (analyst && c.status === "proposed") {
    controls.push(mine ? el("p", { id: "case-waiting" }, t("Waiting for another analyst to approve"))
      : el("div", { class: "actions" }, el("button", { id: "case-approve", onclick: act("approve", {}) }, t("Approve")),
        el("button", { id: "case-reject", onclick: act("reject", {}) }, t("Reject"))));
  }
  if (analyst && (c.proposal === "report" || c.decision === "report")) {
    controls.push(el("p", {}, el("a", { id: "case-csv", href: `/api/cases/${id}/report.csv` }, t("Report (CSV)")), " · ",
      el("a", { id: "case-html", href: `/api/cases/${id}/report.html`, target: "_blank", rel: "noopener" }, t("Report (print)"))));
  }
  d.replaceChildren(
    el("h2", {}, `${t("Case")} ${c.id} — ${t("customer")} ${c.customer_id}`),
    el("p", {}, `${t("status")} `, el("b", { id: "case-status", "data-status": c.status }, t(c.status)),
      ` · ${t("owner")} ${c.owner || "-"} · ${t("proposal")} ${c.proposal ? t(c.proposal) + " (" + c.proposed_by + ")" : "-"}` +
      ` · ${t("decision")} ${c.decision ? t(c.decision) + " (" + c.decided_by + ", " + when(c.decided_at) + ")" : "-"}`),
    el("h3", {}, t("Alert groups")),
    el("ul", { id: "case-alerts" }, ...c.alert_groups.map((a) => el("li", { "data-ref": a.ref },
      `${when(a.event_ts)} ${t(a.type)} — ${t(a.severity)} — ${t("score")} ${a.score.toFixed(2)} — ${t(a.status)}: `,
      a.alert.reasons.map((r) => r.text).join("; ")))),
    ...controls,
    el("h3", {}, t("History")),
    el("ul", { id: "case-log" }, ...c.log.map((e) => el("li", { "data-action": e.action },
      el("span", { class: "ts" }, when(e.at)), ` ${e.by} · ${logWord(e.action)}`,
      e.decision ? ` · ${t(e.decision)}` : "", e.owner ? ` · ${e.owner}` : "", e.text ? ` · ${e.text}` : ""))),
    el("h3", {}, t("Timeline")),
    timeline(c.customer.timeline));
}

// -- rule back-test (admin) --------------------------------------------------------------
const pct = (x) => (x === null || x === undefined ? "-" : `${(100 * x).toFixed(1)} %`);

async function loadBacktests() {
  const runs = await api("/api/admin/backtest");
  $("bt-run").disabled = !runs.enabled;
  $("bt-body").replaceChildren(...runs.items.map((r) => {
    const cur = (r.result || {}).current || {}, chg = (r.result || {}).changed || {};
    return el("tr", { "data-run": r.id, "data-status": r.status }, el("td", {}, when(r.started_at)), el("td", {}, r.by),
      el("td", {}, r.changes.join(", ")), el("td", { class: "status" }, t(r.status) + (r.error ? `: ${r.error}` : "")),
      el("td", {}, r.result ? `${cur.alerts} / ${chg.alerts}` : ""), el("td", {}, r.result ? `${pct(cur.precision)} / ${pct(chg.precision)}` : ""),
      el("td", {}, r.result ? `${pct(cur.recall)} / ${pct(chg.recall)}` : ""));
  }));
  if (runs.items.some((r) => r.status === "running")) setTimeout(loadBacktests, 3000);
}

// A customer's timeline, newest first: the events the engine received (with [redis]
// recent_events) between the alerts and prompts it decided, each kind styled apart.
function timeline(items) {
  return el("ul", { class: "timeline" }, ...items.map((t) => el("li", { class: `tl-${t.kind}`, "data-kind": t.kind,
    "data-event": t.event_id }, el("span", { class: "ts" }, when(t.ts)), " ", t.what)));
}

const fmt = (x) => (x === null || x === undefined ? "-" : Number(x).toFixed(2));

// -- RM view -----------------------------------------------------------------------------
function promptCard(p) {
  const answer = (what) => async () => {
    try { await api(`/api/rm/prompts/${p.prompt_id}/answer`, { answer: what }); await loadRM(); await loadPlots(); }
    catch (e) { alert(e.message); }
  };
  const buttons = p.status === "new"
    ? [el("button", { class: "accept", onclick: answer("accepted") }, t("Accept")),
       el("button", { class: "dismiss", onclick: answer("dismissed") }, t("Dismiss"))]
    : [el("button", { class: "convert", onclick: answer("converted") }, t("Converted")),
       el("button", { class: "dismiss", onclick: answer("dismissed") }, t("Dismiss"))];
  return el("li", { "data-prompt": p.prompt_id, "data-customer": p.customer_id },
    el("b", {}, p.title || p.action), ` ${p.product_id || ""} ${t("for")} `,
    el("a", { href: "#", onclick: (e) => { e.preventDefault(); openCustomer(p.cref); } }, p.customer_id),
    el("div", {}, `${t("score")} ${p.score.toFixed(2)} · ${t(p.trigger)} · ${t("until")} ${when(p.expires_at)}`),
    el("div", {}, p.reasons.map((r) => r.text).join("; ")), el("div", {}, ...buttons));
}

// A churn warning or a complaint escalation about one of the RM's customers: its reasons
// (a complaint's quotes the customer's text, identifiers masked).
function rmAlertCard(a, title) {
  return el("li", { "data-ref": a.ref, "data-customer": a.customer_id, "data-severity": a.severity },
    el("b", {}, title), " ",
    el("a", { href: "#", onclick: (e) => { e.preventDefault(); openCustomer(a.cref); } }, a.customer_id),
    el("div", {}, a.alert.reasons.map((r) => r.text).join("; ")));
}

async function loadRM() {
  const [fresh, accepted, churn, complaints] = await Promise.all([
    api("/api/rm/prompts?which=new&limit=50"), api("/api/rm/prompts?which=accepted&limit=50"), api("/api/rm/churn?limit=50"),
    api("/api/rm/churn?type=complaint_escalation&limit=50")]);
  $("prompts").replaceChildren(...fresh.items.map(promptCard));
  $("prompt-count").textContent = `(${fresh.total})`;
  $("accepted").replaceChildren(...accepted.items.map(promptCard));
  $("complaints").replaceChildren(...complaints.items.map((a) =>
    rmAlertCard(a, `${t("complaint_escalation")} — ${t(a.severity)} — ${when(a.event_ts)}`)));
  $("churn").replaceChildren(...churn.items.map((a) => rmAlertCard(a, `${t("churn risk")} ${a.score.toFixed(2)}`)));
}

async function openCustomer(cref) {
  const c = await api(`/api/customers/${cref}`);
  const d = $("rm-detail"); d.hidden = false;
  d.replaceChildren(el("h2", {}, `${t("customer")} ${c.customer_id}`), el("p", {}, `${t("churn score")} ${fmt(c.churn_score)}`),
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
    await loadFairness();
  }
  if (s.rm) {
    const r = s.rm;
    bars($("plot-rm"), [r.prompts, r.accepted, r.dismissed, r.converted],
      [t("prompts"), t("accepted"), t("dismissed"), `${t("converted")} (${(100 * r.conversion_rate).toFixed(1)} %)`]);
  }
}

async function loadModels() {
  const m = await api("/api/models");
  const fmt = (v) => (v === null || v === undefined ? t("n/a") : v.toFixed(3));
  const report = m.report;
  $("models-as-of").textContent = report ? `${t("as of")} ${when(report.as_of)}` : t("(no evaluation yet)");
  $("models-body").replaceChildren(...(report ? report.models : []).map((f) => el("tr", { "data-model": f.model },
    el("td", {}, f.model), el("td", {}, f.version), el("td", {}, fmt(f.auc)), el("td", {}, fmt(f.ap)),
    el("td", {}, f.labels), el("td", {}, f.frauds), el("td", {}, t(f.model === report.champion ? "champion" : "challenger")))));
  const c = m.change;
  $("models-change").textContent = c ? `${when(c.as_of)}: ${c.from_model} -> ${c.to_model} (${c.action}): ${c.reason}` : "";
}

// The latest fairness_drift alert of each dimension: the groups under the threshold, their
// rate against the best-served group's (the alert's reasons carry the figures).
async function loadFairness() {
  const page = await api("/api/alerts?type=fairness_drift&status=all&limit=20");
  const latest = new Map();
  for (const item of page.items) {
    for (const r of item.alert.reasons) {
      const a = r.args || {};
      if (!latest.has(a.dimension)) latest.set(a.dimension, { ts: item.event_ts, rows: [] });
      if (latest.get(a.dimension).ts === item.event_ts) latest.get(a.dimension).rows.push(a);
    }
  }
  const fmt = (v) => (typeof v === "number" ? v.toFixed(3) : t("n/a"));
  const rows = [];
  for (const [dimension, { rows: breaches }] of latest) {
    for (const a of breaches) {
      rows.push(el("tr", { "data-dimension": dimension }, el("td", {}, when(a.window_end || "")), el("td", {}, t(dimension)),
        el("td", {}, a.group), el("td", {}, t(a.metric)), el("td", {}, fmt(a.rate)), el("td", {}, fmt(a.best)),
        el("td", { class: a.ratio < a.threshold ? "breach" : "" }, fmt(a.ratio)), el("td", {}, fmt(a.threshold))));
    }
  }
  $("fairness-body").replaceChildren(...rows);
  $("fairness-none").hidden = rows.length > 0;
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
  let casesDue = 0;
  source.addEventListener("case", (e) => {
    const c = JSON.parse(e.data);
    if (Date.now() > casesDue) { casesDue = Date.now() + 500; setTimeout(loadCases, 500); }
    if (!$("case-detail").hidden && $("case-detail").dataset.case === c.id) openCase(c.id);
  });
  source.addEventListener("prompt", (e) => {
    const p = JSON.parse(e.data);
    if (p.status === "new" && !document.querySelector(`#prompts li[data-prompt="${p.prompt_id}"]`)) {
      $("prompts").prepend(promptCard(p));
    }
    plotsSoon();
  });
}

document.addEventListener("DOMContentLoaded", async () => {
  await loadDisplay();
  $("login-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    try {
      state.me = await api("/api/login", { username: $("username").value, password: $("password").value });
      $("password").value = ""; $("login-error").textContent = "";
      await start();
    } catch (err) { $("login-error").textContent = err.message; }
  });
  $("logout").addEventListener("click", async () => { await api("/api/logout", {}); state.me = null; showLogin(); });
  $("f-case").addEventListener("change", loadCases);
  $("bt-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const changes = $("bt-changes").value.split(/[\s,]+/).filter(Boolean);
    try { await api("/api/admin/backtest", { changes }); $("bt-error").textContent = ""; await loadBacktests(); }
    catch (err) { $("bt-error").textContent = err.message; }
  });
  for (const id of ["f-status", "f-type", "f-severity"]) $(id).addEventListener("change", () => { state.offset = 0; loadQueue(); });
  $("prev").addEventListener("click", () => { state.offset = Math.max(0, state.offset - state.limit); loadQueue(); });
  $("next").addEventListener("click", () => { state.offset += state.limit; loadQueue(); });
  start();
});
