"""The dashboard page: plain HTML and a little JavaScript, no build step.

The token: open ``/?token=...`` once (it is kept in the browser's localStorage and removed
from the address bar), or paste it in the login field.

Live: an EventSource on ``/v1/events/stream`` (the fleet's event stream; the token goes in
the query, EventSource cannot send headers). Each event marks what it changes (status, the
blocked list, the reports when a task ends) and those parts are fetched again, at most a few
times a second. Polling is the fallback: every 3 s while the stream is down, else every 30 s
(ages and idle times). Reports never force a flush of the event log: they read what the
supervisor rolled into Parquet (every second by default), fetched a moment after a task ends.
"""

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
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
  .awaiting_approval, .paused, .cancelled { color:var(--warn); } .running { color:var(--acc); }
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
const code = (id) => '<code class="task-id">' + esc(id) + "</code>";
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
    (r) => [code(r.task_id), esc(r.worker), esc(r.attempt), secs(plus(r.age_s)),
            esc(r.last_event), secs(plus(r.last_event_age_s))]);
}
async function refresh() {
  try {
    const s = await api("/v1/fleet/status");
    shown = s; shownAt = Date.now(); tick();
    document.getElementById("counts").innerHTML = Object.entries(s.counts).map(([k, v]) =>
      '<div class="count"><b class="' + esc(k) + '">' + esc(v) + "</b>" + esc(k) + "</div>")
      .join("");
    rows("queue", ["#", "task"], s.queued, (id) => [s.queued.indexOf(id) + 1, code(id)]);
    rows("recent", ["task", "outcome", "reason"], s.recent.slice().reverse(),
      (r) => [code(r.task_id), '<span class="' + esc(r.state) + '">' + esc(r.state) + "</span>",
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
      ["awaiting_approval", "awaiting_review", "needs_human", "paused"].map(
        (st) => api("/v1/sessions?limit=20&status=" + st)));
    const items = lists.flatMap((l) => l.data);
    const waiting = (x) => x.pending_approval ? esc(x.pending_approval.tool) + " " +
      esc(JSON.stringify(x.pending_approval.args || {}).slice(0, 80)) :
      esc(x.status === "awaiting_review" ? x.summary || "the result" : x.reason);
    rows("blocked", ["session: waiting on", "status"], items, (x) => [
      code(x.id) + '<div class="sub">' + waiting(x) + "</div>",
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
const ENDED = new Set(["task.succeeded", "task.failed", "task.needs_human", "task.cancelled"]);
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
