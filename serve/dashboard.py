"""The dashboard page: plain HTML and a little JavaScript, no build step.

Every task id links to the task's own page (``/sessions/{id}``, :data:`SESSION_PAGE`); the
lists show the start of each task's prompt (the status carries them).

The token: open ``/?token=...`` once (it is kept in the browser's localStorage and removed
from the address bar), or paste it in the login field.

Live: an EventSource on ``/v1/events/stream`` (the fleet's event stream; the token goes in
the query, EventSource cannot send headers). Each event marks what it changes (status, the
blocked list, the reports when a task ends) and those parts are fetched again, at most a few
times a second. Polling is the fallback: every 3 s while the stream is down, else every 30 s
(ages and idle times). Reports never force a flush of the event log: they read what the
supervisor rolled into Parquet (every second by default), fetched a moment after a task ends.
"""

import json

from core.events import EventType

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>agent-fleet</title>
<style>
  :root { --bg:#f6f7f9; --card:#fff; --ink:#1d2430; --mute:#6b7482; --ok:#1a7f37;
          --bad:#c62828; --warn:#b26a00; --acc:#2f6fde; }
  * { box-sizing: border-box; }
  body { margin:0; font:14px/1.4 system-ui, sans-serif; background:var(--bg); color:var(--ink); }
  header { display:flex; align-items:center; gap:16px; padding:10px 20px; background:#1d2430;
           color:#fff; }
  header h1 { font-size:16px; margin:0; }
  header .meta { color:#aab3c0; font-size:12px; }
  header form { margin-left:auto; display:flex; gap:6px; }
  main { display:grid; grid-template-columns:repeat(auto-fit, minmax(380px, 1fr)); gap:14px;
         padding:14px 20px; }
  section { background:var(--card); border-radius:8px; padding:12px 14px;
            box-shadow:0 1px 2px rgba(0,0,0,.08); min-width:0; overflow-x:auto; }
  h2 { font-size:13px; text-transform:uppercase; letter-spacing:.04em; color:var(--mute);
       margin:0 0 8px; }
  table { width:100%; border-collapse:collapse; }
  td, th { text-align:left; padding:3px 6px; border-bottom:1px solid #eef0f3;
           white-space:nowrap; overflow:hidden; text-overflow:ellipsis; max-width:180px; }
  th { color:var(--mute); font-weight:500; font-size:12px; }
  .sub { white-space:normal; color:var(--mute); font-size:12px; }
  .acts { margin-top:4px; }
  .counts { display:flex; flex-wrap:wrap; gap:8px; }
  .count { background:#eef2f8; border-radius:6px; padding:6px 10px; min-width:84px; }
  .count b { display:block; font-size:20px; }
  .succeeded { color:var(--ok); } .failed, .needs_human { color:var(--bad); }
  .awaiting_approval, .awaiting_tool_result, .paused, .cancelled, .expired { color:var(--warn); }
  .running, .idle { color:var(--acc); }
  .big { font-size:34px; font-weight:600; }
  button { border:0; border-radius:5px; padding:3px 9px; cursor:pointer; color:#fff; }
  .allow { background:var(--ok); } .deny { background:var(--bad); }
  #live { font-size:12px; color:#aab3c0; } #live[data-state="open"] { color:#8fd19e; }
  .empty { color:var(--mute); font-style:italic; }
  #error { color:#ffb4b4; font-size:12px; }
  code { font-size:12px; }
</style>
</head>
<body>
<header>
  <h1>agent-fleet</h1>
  <a class="meta" href="/reports">reports</a>
  <span class="meta" id="meta">connecting...</span>
  <span id="live" data-state="connecting" data-events="0">stream: connecting</span>
  <span id="error"></span>
  <form id="login">
    <input id="token" type="password" placeholder="API token" size="24">
    <button class="allow" type="submit">Use token</button>
  </form>
</header>
<main>
  <section><h2>Tasks by state</h2><div class="counts" id="counts"></div></section>
  <section><h2>Success rate</h2>
    <div class="big" id="rate">-</div><div class="meta" id="rate-detail"></div></section>
  <section><h2>Running sessions</h2><table id="running"></table></section>
  <section><h2>Queue</h2><table id="queue"></table></section>
  <section><h2>Awaiting approval and blocked</h2><table id="blocked"></table></section>
  <section><h2>Recent outcomes</h2><table id="recent"></table></section>
  <section><h2>Live events</h2><table id="events"></table></section>
  <section style="grid-column:1/-1"><h2>Durations of finished tasks (s)</h2>
    <svg id="chart" width="100%" height="160" role="img" aria-label="durations"></svg></section>
</main>
<script>
const KEY = "fleetToken";
const params = new URLSearchParams(location.search);
if (params.get("token")) {
  localStorage.setItem(KEY, params.get("token"));
  history.replaceState(null, "", location.pathname);
}
document.getElementById("login").onsubmit = (e) => {
  e.preventDefault();
  localStorage.setItem(KEY, document.getElementById("token").value.trim());
  refreshAll(); connect(); setInterval(tick, 1000);
};
const esc = (v) => String(v ?? "").replace(/[&<>"']/g,
  (c) => ({"&":"&amp;","<":"&lt;",">":"&gt;",'"':"&quot;","'":"&#39;"}[c]));
const secs = (v) => v == null ? "" : (v < 90 ? v.toFixed(1) + " s" : (v / 60).toFixed(1) + " min");
const code = (id) => '<a href="/sessions/' + encodeURIComponent(id) +
  '"><code class="task-id">' + esc(id) + "</code></a>";
let prompts = {};  // task id -> the start of its prompt (from the status)
const about = (id, text) => code(id) + '<div class="sub prompt">' +
  esc(String(text ?? prompts[id] ?? "").slice(0, 100)) + "</div>";
const errBox = document.getElementById("error");

async function api(path, init = {}) {
  const token = localStorage.getItem(KEY) || "";
  init.headers = Object.assign({"Authorization": "Bearer " + token}, init.headers || {});
  const r = await fetch(path, init);
  if (r.status === 401 || r.status === 403) throw new Error("token refused: enter the API token");
  if (!r.ok) throw new Error(path + ": HTTP " + r.status);
  errBox.textContent = "";
  return r.json();
}
function rows(id, head, list, row) {
  const el = document.getElementById(id);
  if (!list.length) { el.innerHTML = '<tr><td class="empty">none</td></tr>'; return; }
  el.innerHTML = "<tr>" + head.map((h) => "<th>" + h + "</th>").join("") + "</tr>" +
    list.map((x) => "<tr>" + row(x).map((c) => "<td>" + c + "</td>").join("") + "</tr>").join("");
}
let shown = null, shownAt = 0;
function tick() {  // ages go on between fetches: no request needed for that
  if (!shown) return;
  const s = shown, dt = (Date.now() - shownAt) / 1000, plus = (v) => v == null ? v : v + dt;
  document.getElementById("meta").textContent = "fleet " + s.fleet + " \\u00b7 " + s.workers +
    " workers \\u00b7 up " + secs(s.uptime_s + dt);
  rows("running", ["task", "worker", "attempt", "age", "last event", "idle"], s.running,
    (r) => [about(r.task_id), esc(r.worker), esc(r.attempt), secs(plus(r.age_s)),
            esc(r.last_event), secs(plus(r.last_event_age_s))]);
}
async function refresh() {
  try {
    const s = await api("/v1/fleet/status");
    shown = s; shownAt = Date.now(); prompts = s.prompts || {}; tick();
    document.getElementById("counts").innerHTML = Object.entries(s.counts).map(([k, v]) =>
      '<div class="count"><b class="' + esc(k) + '">' + esc(v) + "</b>" + esc(k) + "</div>")
      .join("");
    rows("queue", ["#", "task"], s.queued, (id) => [s.queued.indexOf(id) + 1, about(id)]);
    rows("recent", ["task", "outcome", "reason"], s.recent.slice().reverse(),
      (r) => [about(r.task_id), '<span class="' + esc(r.state) + '">' + esc(r.state) + "</span>",
              esc(r.reason)]);
  } catch (e) { errBox.textContent = e.message; }
}
const BUTTONS = {
  awaiting_approval: [["allow", "allow", "Allow"], ["deny", "deny", "Deny"]],
  awaiting_review: [["approve", "allow", "Approve"], ["reject", "deny", "Reject"]],
};
async function refreshBlocked() {
  try {
    const lists = await Promise.all(
      ["awaiting_approval", "awaiting_tool_result", "awaiting_review", "needs_human", "paused",
       "idle"].map(
        (st) => api("/v1/sessions?limit=20&status=" + st)));
    const items = lists.flatMap((l) => l.data);
    const custom = (c) => c && {tool: c.tool, args: c.input};
    const call = (x) => x.pending_approval || custom(x.pending_custom_tool);
    const waiting = (x) => call(x) ? esc(call(x).tool) + " " +
      esc(JSON.stringify(call(x).args || {}).slice(0, 80)) :
      esc(x.status === "awaiting_review" ? x.summary || "the result" : x.reason);
    rows("blocked", ["session: waiting on", "status"], items, (x) => [
      about(x.id, x.prompt) + '<div class="sub">' + waiting(x) + "</div>",
      '<span class="' + esc(x.status) + '">' + esc(x.status) + '</span><div class="acts">' +
      (BUTTONS[x.status] || []).map(([act, cls, label]) => '<button class="' + cls +
        '" data-id="' + esc(x.id) + '" data-act="' + act + '">' + label + "</button>").join(" ") +
      "</div>"]);
  } catch (e) { errBox.textContent = e.message; }
}
document.getElementById("blocked").onclick = async (e) => {
  const b = e.target.closest("button"); if (!b) return;
  const id = encodeURIComponent(b.dataset.id), act = b.dataset.act;
  const json = (body) => ({method: "POST", headers: {"Content-Type": "application/json"},
                           body: JSON.stringify(body)});
  try {
    if (act === "allow" || act === "deny") {
      const ev = {type: "user.tool_confirmation", result: act};
      if (act === "deny") ev.deny_message = prompt("Why deny?") || "denied from dashboard";
      await api("/v1/sessions/" + id + "/events", json({events: [ev]}));
    } else {
      const message = act === "reject" ? (prompt("Why reject?") || "rejected from dashboard") : "";
      await api("/v1/tasks/" + id + "/review", json({approve: act === "approve", message}));
    }
  } catch (err) { errBox.textContent = err.message; }
  refreshBlocked();
};
function chart(points) {
  const svg = document.getElementById("chart");
  const w = svg.clientWidth || 800, h = 160, pad = 24;
  if (!points.length) {
    svg.innerHTML = '<text x="10" y="30" fill="#6b7482">no finished tasks yet</text>'; return;
  }
  const max = Math.max(...points.map((p) => p.duration_s || 0), 0.001);
  const bw = Math.max(2, Math.min(28, (w - pad) / points.length - 2));
  const color = {succeeded: "#1a7f37", failed: "#c62828", needs_human: "#c62828"};
  svg.innerHTML = '<text x="2" y="12" font-size="11" fill="#6b7482">' + max.toFixed(2) +
    ' s</text><line x1="' + pad + '" y1="' + (h - 14) + '" x2="' + w + '" y2="' + (h - 14) +
    '" stroke="#ccd"/>' + points.map((p, i) => {
      const bh = Math.max(1, ((p.duration_s || 0) / max) * (h - 34));
      return '<rect x="' + (pad + i * (bw + 2)) + '" y="' + (h - 14 - bh) + '" width="' + bw +
        '" height="' + bh + '" fill="' + (color[p.state] || "#b26a00") + '"><title>' +
        esc(p.task_id) + ": " + esc(p.duration_s) + " s (" + esc(p.state) + ")</title></rect>";
    }).join("");
}
async function refreshReports() {
  try {
    const [o, d] = await Promise.all([api("/v1/reports/overview"), api("/v1/reports/durations")]);
    const row = o.rows[0] || {};
    const ok = d.rows.filter((r) => r.state === "succeeded").length;
    document.getElementById("rate").textContent =
      d.rows.length ? (100 * ok / d.rows.length).toFixed(1) + " %" : "-";
    document.getElementById("rate-detail").textContent = d.rows.length ?
      ok + " of the last " + d.rows.length + " finished tasks \\u00b7 p50 " + row.p50_s +
      " s \\u00b7 p90 " + row.p90_s + " s \\u00b7 " + row.tasks + " tasks in the log" :
      "no finished tasks yet";
    chart(d.rows.slice(0, 60).reverse());
  } catch (e) { errBox.textContent = e.message; }
}
function refreshAll() { refresh(); refreshBlocked(); refreshReports(); }

// -- live: the fleet's event stream; each event refreshes what it changes (throttled) ----
const live = {state: "connecting", events: 0, log: []};
window.fleetLive = live;
const pending = {};
function soon(name, fn, ms) {
  if (!pending[name]) pending[name] = setTimeout(() => { pending[name] = null; fn(); }, ms);
}
const ENDED = new Set(["task.succeeded", "task.failed", "task.needs_human", "task.cancelled",
                       "task.expired"]);
function showLive(state) {
  live.state = state;
  const el = document.getElementById("live");
  el.dataset.state = state; el.dataset.events = live.events;
  el.textContent = "stream: " + state + " \\u00b7 " + live.events + " events";
}
function onEvent(e) {
  live.events += 1;
  live.log.unshift(e); live.log.length = Math.min(live.log.length, 15);
  showLive(live.state);
  rows("events", ["time", "task", "event"], live.log, (x) => [esc((x.ts || "").slice(11, 19)),
    code(x.task_id), esc(x.type) + (x.tool ? " " + esc(x.tool) : "")]);
  soon("status", refresh, 150);
  if (/^(task|approval|review|user)\\./.test(e.type)) soon("blocked", refreshBlocked, 250);
  if (ENDED.has(e.type)) soon("reports", refreshReports, 2500);  // once rolled into Parquet
}
let source = null;
function connect() {
  if (source) source.close();
  const token = localStorage.getItem(KEY) || "";
  source = new EventSource("/v1/events/stream?token=" + encodeURIComponent(token));
  source.addEventListener("stream.open", () => { showLive("open"); refreshAll(); });
  source.addEventListener("stream.gap", refreshAll);
  source.onmessage = (m) => { try { onEvent(JSON.parse(m.data)); } catch (err) {} };
  source.onerror = () => {  // EventSource retries by itself unless it gave up (CLOSED)
    showLive(source.readyState === EventSource.CLOSED ? "closed" : "reconnecting");
    if (source.readyState === EventSource.CLOSED) setTimeout(connect, 5000);
  };
}
refreshAll(); connect(); setInterval(tick, 1000);
live.polls = [  // the fallback
  setInterval(() => { if (live.state !== "open") { refresh(); refreshBlocked(); } }, 3000),
  setInterval(() => { if (live.state === "open") { refresh(); refreshBlocked(); } }, 30000),
  setInterval(refreshReports, 60000),
];
</script>
</body>
</html>
"""

SESSION_PAGE_TEMPLATE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>session - agent-fleet</title>
<style>
  :root { --bg:#f6f7f9; --card:#fff; --ink:#1d2430; --mute:#6b7482; --ok:#1a7f37;
          --bad:#c62828; --warn:#b26a00; --acc:#2f6fde; }
  * { box-sizing: border-box; }
  body { margin:0; font:14px/1.4 system-ui, sans-serif; background:var(--bg); color:var(--ink); }
  header { display:flex; align-items:center; gap:16px; padding:10px 20px; background:#1d2430;
           color:#fff; }
  header a { color:#aab3c0; text-decoration:none; } header h1 { font-size:16px; margin:0; }
  #live { font-size:12px; color:#aab3c0; } #live[data-state="open"] { color:#8fd19e; }
  #error { color:#ffb4b4; font-size:12px; }
  main { display:grid; grid-template-columns:minmax(0, 1fr) minmax(0, 1fr); gap:14px;
         padding:14px 20px; }
  section { background:var(--card); border-radius:8px; padding:12px 14px;
            box-shadow:0 1px 2px rgba(0,0,0,.08); min-width:0; overflow-x:auto; }
  .wide { grid-column:1/-1; }
  h2 { font-size:13px; text-transform:uppercase; letter-spacing:.04em; color:var(--mute);
       margin:0 0 8px; }
  pre { margin:0; font-size:12px; white-space:pre-wrap; word-break:break-word; }
  table { width:100%; border-collapse:collapse; }
  td, th { text-align:left; padding:3px 6px; border-bottom:1px solid #eef0f3; vertical-align:top; }
  th { color:var(--mute); font-weight:500; font-size:12px; }
  td.t { white-space:nowrap; color:var(--mute); font-size:12px; }
  .succeeded { color:var(--ok); } .failed, .needs_human { color:var(--bad); }
  .awaiting_approval, .awaiting_tool_result, .paused, .cancelled, .expired { color:var(--warn); }
  .running, .idle { color:var(--acc); }
  .diff .add { background:#e6ffec; color:#1a7f37; }
  .diff .del { background:#ffebe9; color:#c62828; }
  .diff .hunk { color:#6b7482; background:#f0f3f8; } .diff .file { font-weight:600; }
  .diff div { white-space:pre-wrap; font:12px/1.35 monospace; }
  button { border:0; border-radius:5px; padding:4px 10px; cursor:pointer; color:#fff;
           background:var(--acc); }
  .allow { background:var(--ok); } .deny { background:var(--bad); }
  .empty { color:var(--mute); font-style:italic; }
  #files a { cursor:pointer; color:var(--acc); }
  dl { display:grid; grid-template-columns:max-content 1fr; gap:2px 12px; margin:0; }
  dt { color:var(--mute); } dd { margin:0; }
  .acts { display:flex; gap:6px; margin-top:8px; flex-wrap:wrap; }
  #steer-text { flex:1; min-width:200px; }
</style>
</head>
<body>
<header>
  <a href="/">&larr; agent-fleet</a>
  <h1 id="title">session</h1>
  <span id="state"></span>
  <span id="live" data-state="connecting">stream: connecting</span>
  <span id="error"></span>
</header>
<main>
  <section><h2>Task</h2>
    <dl id="facts"></dl>
    <h2 style="margin-top:10px">Prompt</h2><pre id="prompt"></pre>
  </section>
  <section><h2>Steer</h2>
    <div id="waiting" class="empty">no tool call waits for a decision</div>
    <div class="acts" id="decide"></div>
    <form class="acts" id="steer">
      <input id="steer-text" placeholder="a message for the agent (read before its next turn)">
      <button type="submit" id="steer-send">Steer</button>
      <button type="button" id="interrupt" class="deny">Interrupt</button>
      <button type="button" id="close" class="allow" hidden>Close</button>
    </form>
  </section>
  <section class="wide"><h2>Transcript</h2><table id="transcript"></table></section>
  <section class="wide"><h2>Diff</h2><div class="diff" id="diff"><span class="empty">no results
    yet</span></div></section>
  <section><h2>Files</h2><table id="files"><tr><td class="empty">no results yet</td></tr></table>
  </section>
  <section><h2 id="file-name">File</h2><pre id="file"></pre></section>
</main>
<script>
const KEY = "fleetToken";
const params = new URLSearchParams(location.search);
if (params.get("token")) {  // as on the dashboard: kept, and out of the address bar
  localStorage.setItem(KEY, params.get("token"));
  history.replaceState(null, "", location.pathname);
}
const ID = decodeURIComponent(location.pathname.split("/").filter(Boolean).pop());
const BASE = "/v1/sessions/" + encodeURIComponent(ID);
const esc = (v) => String(v ?? "").replace(/[&<>"']/g,
  (c) => ({"&":"&amp;","<":"&lt;",">":"&gt;",'"':"&quot;","'":"&#39;"}[c]));
const errBox = document.getElementById("error");
const EVENT_TYPES = __EVENT_TYPES__;
const page = {events: [], ended: 0, state: "connecting", results: false};
const pending = {};
function soon(name, fn, ms) {  // at most one call per name in flight every ms
  if (!pending[name]) pending[name] = setTimeout(() => { pending[name] = null; fn(); }, ms);
}
window.fleetSession = page;

async function api(path, init = {}, as = "json") {
  const token = localStorage.getItem(KEY) || "";
  init.headers = Object.assign({"Authorization": "Bearer " + token}, init.headers || {});
  const r = await fetch(path, init);
  if (r.status === 401 || r.status === 403) throw new Error("token refused: open / to log in");
  if (!r.ok) {
    let detail = "HTTP " + r.status;
    try { detail = (await r.json()).detail || detail; } catch (e) {}
    throw new Error(detail);
  }
  errBox.textContent = "";
  return as === "json" ? r.json() : (as === "text" ? r.text() : r.arrayBuffer());
}
const post = (events) => api(BASE + "/events", {method: "POST",
  headers: {"Content-Type": "application/json"}, body: JSON.stringify({events})});

async function refreshRecord() {
  try {
    const s = await api(BASE);
    page.record = s;
    document.getElementById("title").textContent = s.id;
    document.title = s.id + " - agent-fleet";
    document.getElementById("state").innerHTML =
      '<span class="' + esc(s.status) + '">' + esc(s.status) + "</span>";
    document.getElementById("prompt").textContent = s.prompt;
    const facts = [["agent", s.agent], ["environment", s.environment], ["attempts", s.attempts],
      ["turns", s.turns], ["tool calls", s.tool_calls], ["summary", s.summary],
      ["reason", s.reason], ["labels", (s.labels || []).join(", ")]];
    let html = facts.filter(([, v]) => v !== "" && v != null)
      .map(([k, v]) => "<dt>" + k + "</dt><dd>" + esc(v) + "</dd>").join("");
    if (s.branch) html += "<dt>branch</dt><dd><code>" + esc(s.branch) + "</code></dd>";
    if (s.pr_url && /^https?:/.test(s.pr_url)) {
      html += '<dt>pull request</dt><dd><a id="pr" href="' + esc(s.pr_url) + '">' +
        esc(s.pr_url) + "</a></dd>";
    }
    document.getElementById("facts").innerHTML = html;
    const ended = ["succeeded", "failed", "needs_human", "cancelled", "expired"]
      .includes(s.status);
    document.getElementById("steer").hidden = ended;  // nothing to steer any more
    // An interactive session: idle between turns (a message resumes it), gated at close.
    document.getElementById("close").hidden = !s.interactive || s.closed;
    document.getElementById("steer-text").placeholder = s.status === "idle" ?
      "a message for the agent (resumes the idle session)" :
      "a message for the agent (read before its next turn)";
    const pending = s.pending_approval;
    const waits = pending && !pending.decision;
    document.getElementById("waiting").className = waits ? "" : "empty";
    document.getElementById("waiting").textContent = waits ? "waiting: " + pending.tool + " " +
      JSON.stringify(pending.args || {}).slice(0, 200) : "no tool call waits for a decision";
    document.getElementById("decide").innerHTML = waits ?
      '<button class="allow" data-act="allow">Allow</button>' +
      '<button class="deny" data-act="deny">Deny</button>' : "";
  } catch (e) { errBox.textContent = e.message; }
}

function detail(e) {
  const p = e.payload || {};
  if (e.type === "agent.tool_use") {
    return (e.tool || "") + " " + (typeof p.args === "string" ? p.args : JSON.stringify(p.args));
  }
  if (e.type === "agent.tool_result") {
    const said = p.stdout || p.output || p.error || "";
    return (e.tool || "") + (p.is_error ? " (error) " : " ") + said;
  }
  return p.text || p.summary || p.reason || p.command || p.output || p.message || "";
}
function addEvent(e) {
  page.events.push(e);
  const table = document.getElementById("transcript");
  if (page.events.length === 1) {
    table.innerHTML = "<tr><th>seq</th><th>time</th><th>event</th><th></th></tr>";
  }
  const row = table.insertRow();
  row.className = "ev";
  row.dataset.type = e.type;
  row.innerHTML = '<td class="t">' + esc(e.seq) + '</td><td class="t">' +
    esc((e.ts || "").slice(11, 19)) + '</td><td class="t">' + esc(e.type) +
    "</td><td><pre>" + esc(String(detail(e)).slice(0, 2000)) + "</pre></td>";
  if (e.type === "session.ended") { page.ended += 1; soon("results", loadResults, 200); }
  if (/^(task|approval|user|session)\\./.test(e.type)) soon("record", refreshRecord, 150);
}

function renderDiff(text) {
  const box = document.getElementById("diff");
  if (!text) { box.innerHTML = '<span class="empty">no changes</span>'; return; }
  box.innerHTML = text.split("\\n").map((line) => {
    const cls = line.startsWith("+++") || line.startsWith("---") ? "file" :
      line.startsWith("+") ? "add" : line.startsWith("-") ? "del" :
      line.startsWith("@@") ? "hunk" : "";
    return '<div class="' + cls + '">' + (esc(line) || " ") + "</div>";
  }).join("");
}
async function loadResults() {
  try {
    const [diff, files] = await Promise.all([api(BASE + "/diff", {}, "text"),
                                             api(BASE + "/files")]);
    page.results = true;
    renderDiff(diff);
    const el = document.getElementById("files");
    el.innerHTML = files.data.length ? "<tr><th>path</th><th>size</th><th>mode</th></tr>" +
      files.data.map((f) => "<tr><td>" + (f.type === "file" ?
        '<a data-path="' + esc(f.path) + '">' + esc(f.path) + "</a>" :
        esc(f.path) + " &rarr; " + esc(f.target)) + "</td><td>" + esc(f.size) + "</td><td>" +
        esc(f.mode) + "</td></tr>").join("") : '<tr><td class="empty">no files</td></tr>';
  } catch (e) {  // none yet (e.g. its session ended without a sandbox): the page says so
    if (!/no results yet/.test(e.message)) errBox.textContent = e.message;
  }
}
document.getElementById("files").onclick = async (e) => {
  const a = e.target.closest("a[data-path]"); if (!a) return;
  const path = a.dataset.path;
  try {
    const data = await api(BASE + "/files/" + path.split("/").map(encodeURIComponent).join("/"),
                           {}, "bytes");
    let text;
    try { text = new TextDecoder("utf-8", {fatal: true}).decode(data); }
    catch (err) { text = "(binary file, " + data.byteLength + " bytes)"; }
    document.getElementById("file-name").textContent = path;
    document.getElementById("file").textContent = text;
  } catch (err) { errBox.textContent = err.message; }
};
document.getElementById("steer").onsubmit = async (e) => {
  e.preventDefault();
  const input = document.getElementById("steer-text");
  const text = input.value.trim(); if (!text) return;
  try {
    await post([{type: "user.message", content: [{type: "text", text}]}]);
    input.value = "";
  } catch (err) { errBox.textContent = err.message; }
};
document.getElementById("interrupt").onclick = async () => {
  try { await post([{type: "user.interrupt"}]); } catch (err) { errBox.textContent = err.message; }
};
document.getElementById("close").onclick = async () => {
  try { await api(BASE + "/close", {method: "POST"}); } catch (err) {
    errBox.textContent = err.message;
  }
  refreshRecord();
};
document.getElementById("decide").onclick = async (e) => {
  const b = e.target.closest("button"); if (!b) return;
  const ev = {type: "user.tool_confirmation", result: b.dataset.act};
  if (b.dataset.act === "deny") ev.deny_message = prompt("Why deny?") || "denied from dashboard";
  try { await post([ev]); } catch (err) { errBox.textContent = err.message; }
  refreshRecord();
};

function showLive(state) {
  page.state = state;
  const el = document.getElementById("live");
  el.dataset.state = state;
  el.textContent = "stream: " + state + " \\u00b7 " + page.events.length + " events";
}
let source = null;
function connect() {
  const token = localStorage.getItem(KEY) || "";
  const last = page.events.length ? page.events[page.events.length - 1].seq : -1;
  source = new EventSource(BASE + "/events/stream?after_seq=" + last + "&token=" +
                           encodeURIComponent(token));
  source.onopen = () => showLive("open");
  const onEvent = (m) => {
    try { addEvent(JSON.parse(m.data)); showLive(page.state); } catch (err) {}
  };
  EVENT_TYPES.forEach((t) => source.addEventListener(t, onEvent));  // each is named by type
  source.addEventListener("session.end", () => {  // it ended: nothing more will come
    source.close(); showLive("ended"); soon("record", refreshRecord, 0);
    if (page.ended) soon("results", loadResults, 0);
  });
  source.onerror = () => {
    if (page.state === "ended") return;
    showLive(source.readyState === EventSource.CLOSED ? "closed" : "reconnecting");
    if (source.readyState === EventSource.CLOSED) setTimeout(connect, 5000);
  };
}
refreshRecord(); connect();
</script>
</body>
</html>
"""
SESSION_PAGE = SESSION_PAGE_TEMPLATE.replace(
    "__EVENT_TYPES__", json.dumps([t.value for t in EventType])
)
"""One task's page (``/sessions/{id}``): its prompt and state, the transcript (the task's
event stream, live while it runs; EventSource names each event by its type, so the page
listens to every type), the diff and files of its results, and the steering buttons."""

REPORTS_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>agent-fleet reports</title>
<style>
  body { margin:0; font:14px system-ui,sans-serif; background:#0f1419; color:#e6e6e6; }
  header { display:flex; gap:12px; align-items:center; padding:10px 16px; }
  a { color:#8ab4f8; } #error { color:#ffb4b4; }
  iframe { width:100%; height:calc(100vh - 52px); border:0; background:#fff; }
</style>
</head>
<body>
<header>
  <a href="/">&larr; dashboard</a>
  <form id="scope"><input id="batch" placeholder="batch (all tasks if empty)" size="28">
    <button type="submit">Show</button></form>
  <span id="error"></span>
</header>
<iframe id="report" title="report"></iframe>
<script>
const KEY = "fleetToken";
async function show() {
  const batch = document.getElementById("batch").value.trim();
  const query = "?fresh=true" + (batch ? "&batch=" + encodeURIComponent(batch) : "");
  const r = await fetch("/v1/charts" + query,
    {headers: {"Authorization": "Bearer " + (localStorage.getItem(KEY) || "")}});
  if (r.status === 401 || r.status === 403) {
    document.getElementById("error").textContent = "token refused: open / to log in";
    return;
  }
  document.getElementById("report").srcdoc = await r.text();
}
document.getElementById("scope").onsubmit = (e) => { e.preventDefault(); show(); };
show();
</script>
</body>
</html>
"""
"""The reports page (``/reports``): the charts of ``GET /v1/charts`` (fetched with the token
the dashboard keeps) in a frame, for all tasks or one batch."""
