"""The dashboard page: plain HTML and a little JavaScript, no build step.

The token: open ``/?token=...`` once (it is kept in the browser's localStorage and removed
from the address bar), or paste it in the login field. The page polls ``/v1/fleet/status``
every second, the blocked sessions every 2 s and the reports every 5 s.
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
            box-shadow:0 1px 2px rgba(0,0,0,.08); min-width:0; }
  h2 { font-size:13px; text-transform:uppercase; letter-spacing:.04em; color:var(--mute);
       margin:0 0 8px; }
  table { width:100%; border-collapse:collapse; }
  td, th { text-align:left; padding:3px 6px; border-bottom:1px solid #eef0f3;
           white-space:nowrap; overflow:hidden; text-overflow:ellipsis; max-width:220px; }
  th { color:var(--mute); font-weight:500; font-size:12px; }
  .counts { display:flex; flex-wrap:wrap; gap:8px; }
  .count { background:#eef2f8; border-radius:6px; padding:6px 10px; min-width:84px; }
  .count b { display:block; font-size:20px; }
  .succeeded { color:var(--ok); } .failed, .needs_human { color:var(--bad); }
  .awaiting_approval, .paused, .cancelled { color:var(--warn); } .running { color:var(--acc); }
  .big { font-size:34px; font-weight:600; }
  button { border:0; border-radius:5px; padding:3px 9px; cursor:pointer; color:#fff; }
  .allow { background:var(--ok); } .deny { background:var(--bad); }
  .empty { color:var(--mute); font-style:italic; }
  #error { color:#ffb4b4; font-size:12px; }
  code { font-size:12px; }
</style>
</head>
<body>
<header>
  <h1>agent-fleet</h1>
  <span class="meta" id="meta">connecting...</span>
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
  refresh(); refreshSlow(); refreshReports();
};
const esc = (v) => String(v ?? "").replace(/[&<>"']/g,
  (c) => ({"&":"&amp;","<":"&lt;",">":"&gt;",'"':"&quot;","'":"&#39;"}[c]));
const secs = (v) => v == null ? "" : (v < 90 ? v.toFixed(1) + " s" : (v / 60).toFixed(1) + " min");
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
async function refresh() {
  try {
    const s = await api("/v1/fleet/status");
    document.getElementById("meta").textContent =
      "fleet " + s.fleet + " \\u00b7 " + s.workers + " workers \\u00b7 up " + secs(s.uptime_s);
    document.getElementById("counts").innerHTML = Object.entries(s.counts).map(([k, v]) =>
      '<div class="count"><b class="' + esc(k) + '">' + esc(v) + "</b>" + esc(k) + "</div>")
      .join("");
    rows("running", ["task", "worker", "attempt", "age", "last event", "idle"], s.running,
      (r) => ['<code class="task-id">' + esc(r.task_id) + "</code>", esc(r.worker), esc(r.attempt),
              secs(r.age_s), esc(r.last_event), secs(r.last_event_age_s)]);
    rows("queue", ["#", "task"], s.queued, (id) => [s.queued.indexOf(id) + 1,
      '<code class="task-id">' + esc(id) + "</code>"]);
    rows("recent", ["task", "outcome", "reason"], s.recent.slice().reverse(),
      (r) => ['<code class="task-id">' + esc(r.task_id) + "</code>",
              '<span class="' + esc(r.state) + '">' + esc(r.state) + "</span>", esc(r.reason)]);
  } catch (e) { errBox.textContent = e.message; }
}
async function refreshSlow() {
  try {
    const lists = await Promise.all(["awaiting_approval", "needs_human", "paused"].map(
      (st) => api("/v1/sessions?limit=20&status=" + st)));
    const items = lists.flatMap((l) => l.data);
    rows("blocked", ["session", "status", "waiting on", ""], items, (x) => [
      '<code class="task-id">' + esc(x.id) + "</code>",
      '<span class="' + esc(x.status) + '">' + esc(x.status) + "</span>",
      x.pending_approval ? esc(x.pending_approval.tool) + " " +
        esc(JSON.stringify(x.pending_approval.args || {})).slice(0, 80) : esc(x.reason),
      x.status === "awaiting_approval" ?
        '<button class="allow" data-id="' + esc(x.id) + '" data-r="allow">approve</button> ' +
        '<button class="deny" data-id="' + esc(x.id) + '" data-r="deny">deny</button>' : ""]);
  } catch (e) { errBox.textContent = e.message; }
}
document.getElementById("blocked").onclick = async (e) => {
  const b = e.target.closest("button"); if (!b) return;
  const ev = {type: "user.tool_confirmation", result: b.dataset.r};
  if (b.dataset.r === "deny") ev.deny_message = prompt("Why deny?") || "denied from dashboard";
  try {
    await api("/v1/sessions/" + encodeURIComponent(b.dataset.id) + "/events", {method: "POST",
      headers: {"Content-Type": "application/json"}, body: JSON.stringify({events: [ev]})});
  } catch (err) { errBox.textContent = err.message; }
  refreshSlow();
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
refresh(); refreshSlow(); refreshReports();
setInterval(refresh, 1000); setInterval(refreshSlow, 2000); setInterval(refreshReports, 5000);
</script>
</body>
</html>
"""
