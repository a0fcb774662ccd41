// Larder status page: polls /ui/data and redraws. Plain DOM and inline SVG, no libraries,
// nothing loaded from elsewhere (the page must work on an offline network).
"use strict";

// No red: red is the write gap.
const COLORS = ["#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2"];
const colorOf = (() => {
  const seen = {};
  return (name) => {
    if (!(name in seen)) seen[name] = COLORS[Object.keys(seen).length % COLORS.length];
    return seen[name];
  };
})();

function esc(s) {
  return String(s == null ? "" : s).replace(/[&<>"']/g, (c) =>
    ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

function bytes(n) {
  if (n == null) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n) + " " + units[i];
}

function duration(ms) {
  if (ms == null) return "–";
  if (ms < 1000) return ms + " ms";
  if (ms < 60000) return (ms / 1000).toFixed(2) + " s";
  return Math.floor(ms / 60000) + " min " + Math.round((ms % 60000) / 1000) + " s";
}

function clock(ms) {
  return new Date(ms).toLocaleTimeString([], { hour12: false });
}

function renderSummary(d) {
  const parts = [
    "leader: <b>" + esc(d.leader || "none") + "</b>",
    "term " + esc(d.term),
    "cluster failover " + (d.cluster_failover ? "on" : "<span class=bad>off</span>"),
  ];
  if (d.upgrade) parts.push("<span class=bad>upgrade running on " + esc(d.upgrade) + "</span>");
  if (d.down_for_upgrade.length) parts.push("<span class=bad>down for upgrade: " + esc(d.down_for_upgrade.join(", ")) + "</span>");
  document.getElementById("summary").innerHTML = parts.join(" · ");
  document.getElementById("served-by").textContent = d.node;
}

function renderTable(d) {
  const rows = d.members.map((m) => {
    const cls = m.leader ? "leader" : (m.online ? "" : "offline");
    const search = m.checks.find((c) => c.name === "search");
    const cells = m.online ? [
      m.role, m.pg,
      search ? (search.ok ? "<span class=ok>ok</span>" : "<span class=bad>down</span>") : "–",
      m.leader ? "–" : bytes(m.lag_bytes),
      m.timeline, m.term, m.version || "?",
      m.failover_enabled ? "on" : "<span class=bad>off</span>",
    ] : ["offline", "–", "–", "–", "–", "–", "–", "–"];
    return '<tr class="' + cls + '" data-node="' + esc(m.name) + '"><td>' + esc(m.name) +
      (m.leader ? " ★" : "") + "</td>" +
      cells.map((c, i) => "<td>" + (i === 2 || i === 7 ? c : esc(c)) + "</td>").join("") + "</tr>";
  });
  document.querySelector("#cluster tbody").innerHTML = rows.join("");
}

function renderChecks(d) {
  document.getElementById("checks").innerHTML = d.members.map((m) =>
    '<div class="node-checks"><h3>' + esc(m.name) + "</h3><ul>" +
    (m.online ? m.checks.map((c) =>
      '<li class="' + (c.ok ? "ok" : "bad") + '">' + (c.ok ? "✔ " : "✖ ") + esc(c.name) +
      ": " + esc(c.detail) + "</li>").join("") : '<li class="bad">✖ no status posted</li>') +
    "</ul></div>").join("");
}

function legend(names) {
  return '<div class="legend">' + names.map((n) =>
    '<span><span class="swatch" style="background:' + colorOf(n) + '"></span>' + esc(n) + "</span>").join("") + "</div>";
}

function renderLag(d) {
  const W = 600, H = 140, P = 30;
  const at = d.lag.at_unix_ms;
  const el = document.getElementById("lag");
  if (at.length < 2) { el.innerHTML = '<div class="legend">collecting samples…</div>'; return; }
  const t0 = at[0], t1 = at[at.length - 1];
  let max = 1;
  for (const s of Object.values(d.lag.series)) for (const v of s) if (v != null && v > max) max = v;
  const x = (t) => P + (W - P - 5) * (t - t0) / Math.max(1, t1 - t0);
  const y = (v) => H - 15 - (H - 25) * v / max;
  let svg = '<svg viewBox="0 0 ' + W + " " + H + '" role="img" aria-label="replication lag">';
  svg += '<line x1="' + P + '" y1="' + y(0) + '" x2="' + W + '" y2="' + y(0) + '" stroke="#ccc"/>';
  svg += '<text x="2" y="12" font-size="10">' + esc(bytes(max)) + "</text>";
  svg += '<text x="2" y="' + (H - 15) + '" font-size="10">0</text>';
  svg += '<text x="' + P + '" y="' + (H - 2) + '" font-size="10">' + esc(clock(t0)) + "</text>";
  svg += '<text x="' + (W - 50) + '" y="' + (H - 2) + '" font-size="10">' + esc(clock(t1)) + "</text>";
  for (const [name, s] of Object.entries(d.lag.series)) {
    let path = "", pen = false;
    s.forEach((v, i) => {
      if (v == null) { pen = false; return; }
      path += (pen ? " L" : " M") + x(at[i]).toFixed(1) + "," + y(v).toFixed(1);
      pen = true;
    });
    svg += '<path d="' + path + '" fill="none" stroke-width="2" stroke="' + colorOf(name) + '"/>';
  }
  el.innerHTML = svg + "</svg>" + legend(Object.keys(d.lag.series));
}

// Who led when: each term is a bar from the moment its leader became writable to the next
// term's gap start (or now); each hand-over's write gap is a red bar between them.
function renderTimeline(d) {
  const h = d.history;
  const el = document.getElementById("timeline");
  const list = document.getElementById("history");
  if (!h.length) { el.innerHTML = '<div class="legend">no leadership history yet</div>'; list.innerHTML = ""; return; }
  const W = 600, H = 70, P = 5;
  const now = d.now_unix_ms;
  const starts = h.map((e) => e.gap_start_unix_ms != null ? e.gap_start_unix_ms : e.gap_end_unix_ms);
  const t0 = Math.min(...starts), t1 = Math.max(now, t0 + 1);
  const x = (t) => P + (W - 2 * P) * (t - t0) / (t1 - t0);
  let svg = '<svg viewBox="0 0 ' + W + " " + H + '" role="img" aria-label="failover timeline">';
  h.forEach((e, i) => {
    const end = i + 1 < h.length ? starts[i + 1] : now;
    const a = x(e.gap_end_unix_ms), b = Math.max(a + 1, x(end));
    svg += '<rect class="term" data-term="' + e.term + '" x="' + a.toFixed(1) + '" y="10" width="' + (b - a).toFixed(1) +
      '" height="26" fill="' + colorOf(e.to) + '"><title>term ' + e.term + ": " + esc(e.to) + "</title></rect>";
    if (e.gap_start_unix_ms != null) {
      const g0 = x(e.gap_start_unix_ms);
      svg += '<rect class="gap" x="' + g0.toFixed(1) + '" y="6" width="' + Math.max(2, a - g0).toFixed(1) +
        '" height="34" fill="#b3261e"><title>' + esc(e.kind) + " gap " + esc(duration(e.gap_end_unix_ms - e.gap_start_unix_ms)) + "</title></rect>";
    }
  });
  svg += '<text x="' + P + '" y="' + (H - 12) + '" font-size="10">' + esc(clock(t0)) + "</text>";
  svg += '<text x="' + (W - 50) + '" y="' + (H - 12) + '" font-size="10">now</text>';
  el.innerHTML = svg + "</svg>" + legend([...new Set(h.map((e) => e.to))]) +
    '<div class="legend"><span><span class="swatch" style="background:#b3261e"></span>write gap</span></div>';
  list.innerHTML = h.slice().reverse().map((e) => {
    const gap = e.gap_start_unix_ms != null ? e.gap_end_unix_ms - e.gap_start_unix_ms : null;
    return '<li class="entry" data-kind="' + esc(e.kind) + '" data-from="' + esc(e.from || "") + '" data-to="' + esc(e.to) + '">' +
      esc(clock(e.gap_end_unix_ms)) + " — term " + esc(e.term) + ' <span class="kind">' + esc(e.kind) + "</span> " +
      esc(e.from ? e.from + " → " + e.to : e.to) + ", gap " + esc(duration(gap)) + " (" + esc(e.reason) + ")</li>";
  }).join("");
}

function show(d) {
  renderSummary(d);
  renderTable(d);
  renderChecks(d);
  renderLag(d);
  renderTimeline(d);
  const alert = document.getElementById("alert");
  alert.hidden = !d.last_error;
  alert.textContent = d.last_error ? "last HA loop error on " + d.node + ": " + d.last_error : "";
  document.body.dataset.loaded = "1";
}

async function refresh() {
  try {
    const r = await fetch("/ui/data", { cache: "no-store" });
    if (!r.ok) throw new Error("HTTP " + r.status);
    show(await r.json());
  } catch (e) {
    const alert = document.getElementById("alert");
    alert.hidden = false;
    alert.textContent = "cannot reach the agent: " + e.message + " (showing the last data)";
  }
}

refresh();
setInterval(refresh, 2000);
