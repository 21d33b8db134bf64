"""The dashboard page: one self-contained HTML document (no CDN, no external assets).

Hand-written JavaScript polls ``/api/series`` every second and draws line charts on
``<canvas>``. After each render it writes the latest value of every headline figure
into an element with an id (``v-events``, ``v-latency-p50``, ...) as text and as a
``data-value`` attribute, and bumps ``#status[data-renders]``: the e2e test reads them.
"""

from __future__ import annotations

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Personalization — live</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
  :root { --bg:#0f1419; --panel:#182029; --grid:#2a3440; --text:#d8dee6; --muted:#8a96a3; }
  * { box-sizing: border-box; }
  body { margin:0; background:var(--bg); color:var(--text);
         font:14px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; }
  header { display:flex; align-items:center; gap:16px; padding:10px 18px;
           border-bottom:1px solid var(--grid); }
  header h1 { font-size:17px; margin:0; font-weight:600; }
  .badge { padding:2px 8px; border-radius:10px; font-size:12px; background:#2a3440; }
  .badge.up { background:#1f5130; } .badge.down { background:#6b2222; }
  #status { margin-left:auto; color:var(--muted); font-size:12px; }
  .tiles { display:grid; grid-template-columns:repeat(8, 1fr); gap:10px; padding:12px 18px 0; }
  .tile { background:var(--panel); border-radius:6px; padding:8px 10px; }
  .tile .label { color:var(--muted); font-size:11px; text-transform:uppercase; }
  .tile .value { font-size:20px; font-weight:600; font-variant-numeric:tabular-nums; }
  .grid { display:grid; grid-template-columns:1fr 1fr; gap:12px; padding:12px 18px 18px; }
  .panel { background:var(--panel); border-radius:6px; padding:10px 12px; min-width:0; }
  .panel h2 { font-size:13px; margin:0 0 6px; font-weight:600; }
  .panel h2 small { color:var(--muted); font-weight:400; margin-left:6px; }
  canvas { width:100%; height:190px; display:block; }
  .legend { display:flex; flex-wrap:wrap; gap:4px 14px; font-size:12px; color:var(--muted);
            margin-top:4px; min-height:17px; }
  .legend i { display:inline-block; width:10px; height:3px; margin-right:5px;
              vertical-align:middle; }
  .legend b { color:var(--text); font-weight:500; margin-left:4px;
              font-variant-numeric:tabular-nums; }
  .empty { color:var(--muted); height:190px; display:flex; align-items:center;
           justify-content:center; font-style:italic; }
  table { width:100%; border-collapse:collapse; font-size:13px; }
  th, td { text-align:right; padding:4px 6px; border-bottom:1px solid var(--grid); }
  th:first-child, td:first-child { text-align:left; }
</style>
</head>
<body>
<header>
  <h1>Real-time personalization</h1>
  <span class="badge" id="ep-job">job</span>
  <span class="badge" id="ep-writer">writer</span>
  <span class="badge" id="ep-serving">serving</span>
  <span id="status" data-renders="0">waiting for data…</span>
</header>
<section class="tiles">
  <div class="tile"><div class="label">events/s</div>
    <div class="value" id="v-events">–</div></div>
  <div class="tile"><div class="label">freshness p50</div>
    <div class="value" id="v-freshness-p50">–</div></div>
  <div class="tile"><div class="label">freshness p99</div>
    <div class="value" id="v-freshness-p99">–</div></div>
  <div class="tile"><div class="label">Recommend p50</div>
    <div class="value" id="v-latency-p50">–</div></div>
  <div class="tile"><div class="label">Recommend p99</div>
    <div class="value" id="v-latency-p99">–</div></div>
  <div class="tile"><div class="label">Recommend/s</div>
    <div class="value" id="v-rps">–</div></div>
  <div class="tile"><div class="label">watermark lag</div>
    <div class="value" id="v-watermark-lag">–</div></div>
  <div class="tile"><div class="label">catalog items</div>
    <div class="value" id="v-catalog">–</div></div>
</section>
<section class="grid">
  <div class="panel"><h2>Events/s by family<small id="v-events-window"></small></h2>
    <canvas id="c-events"></canvas><div class="legend" id="l-events"></div></div>
  <div class="panel"><h2>Feature freshness at write<small>wall clock − row version</small></h2>
    <canvas id="c-freshness"></canvas><div class="legend" id="l-freshness"></div></div>
  <div class="panel"><h2>Serving latency<small>Recommend, server side</small></h2>
    <canvas id="c-latency"></canvas><div class="legend" id="l-latency"></div></div>
  <div class="panel"><h2>Trigger counts<small>since job start · total
    <b id="v-triggers">–</b></small></h2>
    <canvas id="c-triggers"></canvas><div class="legend" id="l-triggers"></div></div>
  <div class="panel"><h2>Dead letters<small>since job start · total
    <b id="v-dlq">–</b></small></h2>
    <canvas id="c-dlq"></canvas><div class="legend" id="l-dlq"></div></div>
  <div class="panel"><h2>Watermark lag<small>wall clock − event-time watermark · writer
    consumer lag <b id="v-writer-lag">–</b> msgs</small></h2>
    <canvas id="c-lag"></canvas><div class="legend" id="l-lag"></div></div>
  <div class="panel" id="model-panel" data-state="empty"><h2>Model quality
    <small>prequential, from pz_model_prequential</small></h2>
    <div class="empty" id="model-empty">no data yet</div>
    <canvas id="c-model" hidden></canvas><div class="legend" id="l-model"></div></div>
  <div class="panel" id="ab-panel" data-state="empty"><h2>A/B results
    <small>per variant, from pz_experiment_*</small></h2>
    <div class="empty" id="ab-empty">no data yet</div>
    <div id="ab-table"></div></div>
</section>
<script>
"use strict";
const COLORS = ["#4cc9f0", "#f8961e", "#90be6d", "#f94144", "#b5179e", "#f9c74f",
                "#577590", "#43aa8b", "#ff8fab", "#a0c4ff"];
let renders = 0, points = [], lastT = null, payload = null;

function fmtNum(v, digits) {
  if (v === null || v === undefined || !isFinite(v)) return "–";
  const a = Math.abs(v);
  if (digits === undefined && Number.isInteger(v) && a < 1e4) return String(v);
  if (a >= 1e6) return (v / 1e6).toFixed(1) + "M";
  if (a >= 1e4) return (v / 1e3).toFixed(1) + "k";
  return v.toFixed(digits === undefined ? (a >= 100 ? 0 : a >= 10 ? 1 : 2) : digits);
}
function fmtSeconds(v) {
  if (v === null || v === undefined || !isFinite(v)) return "–";
  const a = Math.abs(v);
  if (a === 0) return "0";
  if (a < 1e-3) return (v * 1e6).toFixed(0) + " µs";
  if (a < 1) return (v * 1e3).toFixed(a < 0.01 ? 2 : a < 0.1 ? 1 : 0) + " ms";
  if (a < 120) return v.toFixed(a < 10 ? 2 : 1) + " s";
  if (a < 7200) return (v / 60).toFixed(1) + " min";
  return (v / 3600).toFixed(1) + " h";
}
function niceStep(range, ticks) {
  const raw = range / Math.max(1, ticks), mag = Math.pow(10, Math.floor(Math.log10(raw)));
  const n = raw / mag;
  return (n <= 1 ? 1 : n <= 2 ? 2 : n <= 5 ? 5 : 10) * mag;
}
function seriesOf(key) { return points.map(p => (key in p ? p[key] : null)); }
function latest(key) {
  for (let i = points.length - 1; i >= 0; i--) if (key in points[i]) return points[i][key];
  return null;
}
function keysWith(prefix) {
  const seen = new Set();
  for (const p of points) for (const k in p) if (k.startsWith(prefix)) seen.add(k);
  return Array.from(seen).sort();
}
function setValue(id, value, text) {
  const el = document.getElementById(id);
  if (!el) return;
  el.textContent = text;
  if (value === null || value === undefined || !isFinite(value)) el.removeAttribute("data-value");
  else el.setAttribute("data-value", String(value));
}

// A line chart: lines = [{name, key, color, values}], fmt = tick/legend formatter.
function drawChart(id, lines, fmt) {
  const canvas = document.getElementById(id);
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth || 600, h = canvas.clientHeight || 190;
  canvas.width = Math.round(w * dpr); canvas.height = Math.round(h * dpr);
  const g = canvas.getContext("2d");
  g.setTransform(dpr, 0, 0, dpr, 0, 0);
  g.clearRect(0, 0, w, h);
  const left = 62, right = 10, top = 8, bottom = 22;
  const pw = w - left - right, ph = h - top - bottom;
  const ts = points.map(p => p.t);
  const t1 = ts.length ? ts[ts.length - 1] : Date.now() / 1000;
  const t0 = Math.min(ts.length ? ts[0] : t1 - 60, t1 - 60);
  let ymax = 0;
  for (const l of lines) for (const v of l.values) if (v !== null && v > ymax) ymax = v;
  if (ymax <= 0) ymax = 1;
  const step = niceStep(ymax * 1.1, 4), ytop = Math.ceil(ymax * 1.1 / step) * step;
  const x = t => left + (t - t0) / Math.max(1e-9, t1 - t0) * pw;
  const y = v => top + ph - v / ytop * ph;
  g.font = "11px system-ui, sans-serif"; g.lineWidth = 1;
  g.strokeStyle = "#2a3440"; g.fillStyle = "#8a96a3";
  g.textAlign = "right"; g.textBaseline = "middle";
  for (let v = 0; v <= ytop + step / 2; v += step) {
    g.beginPath(); g.moveTo(left, y(v)); g.lineTo(left + pw, y(v)); g.stroke();
    g.fillText(fmt(v), left - 6, y(v));
  }
  g.textAlign = "center"; g.textBaseline = "top";
  const span = t1 - t0, tstep = span > 300 ? 120 : span > 120 ? 60 : 15;
  for (let s = 0; s <= span; s += tstep) {
    const t = t1 - s;
    g.fillText(s === 0 ? "now" : "-" + (s >= 60 ? (s / 60) + "m" : s + "s"), x(t), top + ph + 5);
  }
  for (const l of lines) {
    g.strokeStyle = l.color; g.lineWidth = 1.8; g.beginPath();
    let pen = false;
    l.values.forEach((v, i) => {
      if (v === null) { pen = false; return; }
      if (pen) g.lineTo(x(ts[i]), y(v)); else g.moveTo(x(ts[i]), y(v));
      pen = true;
    });
    g.stroke();
  }
  const legend = document.getElementById("l" + id.slice(1));
  legend.replaceChildren(...lines.map(l => {
    const span = document.createElement("span");
    const swatch = document.createElement("i");
    swatch.style.background = l.color;
    const value = document.createElement("b");
    value.textContent = fmt(latest(l.key));
    span.append(swatch, l.name, value);
    return span;
  }));
}
function lineSet(keys, prefix) {
  return keys.map((k, i) => ({name: k.slice(prefix.length), key: k,
                              color: COLORS[i % COLORS.length], values: seriesOf(k)}));
}

function renderEndpoints() {
  for (const name of ["job", "writer", "serving"]) {
    const el = document.getElementById("ep-" + name);
    const up = latest("up." + name);
    const info = (payload.endpoints || {})[name];
    el.className = "badge " + (up === 1 ? "up" : up === 0 ? "down" : "");
    el.textContent = name + (up === 1 ? " ● up" : up === 0 ? " ● down" : " ● off");
    el.title = info ? (info.url + (info.error ? " — " + info.error : "")) : "disabled";
  }
}

function renderModel() {
  const panel = document.getElementById("model-panel");
  const keys = keysWith("model.");
  const canvas = document.getElementById("c-model");
  const versions = payload.model_versions || {};
  if (!keys.length) {
    panel.dataset.state = "empty"; canvas.hidden = true;
    document.getElementById("model-empty").hidden = false;
    return;
  }
  panel.dataset.state = "data"; canvas.hidden = false;
  document.getElementById("model-empty").hidden = true;
  drawChart("c-model", lineSet(keys, "model.").map(l => {
    const model = l.name.split(".")[0];
    return Object.assign(l, {name: l.name + (versions[model] ? " (" + versions[model] + ")" : "")});
  }), v => fmtNum(v, 3));
}

function renderAB() {
  const panel = document.getElementById("ab-panel");
  const exps = payload.experiments || {};
  const table = document.getElementById("ab-table");
  const names = Object.keys(exps);
  if (!names.length) {
    panel.dataset.state = "empty"; document.getElementById("ab-empty").hidden = false;
    table.replaceChildren(); return;
  }
  panel.dataset.state = "data"; document.getElementById("ab-empty").hidden = true;
  const rows = ["<tr><th>experiment / variant</th><th>exposures</th><th>clicks</th>" +
                "<th>CTR</th><th>purchases</th><th>conversion</th><th>revenue</th></tr>"];
  for (const e of names.sort()) for (const v of Object.keys(exps[e]).sort()) {
    const r = exps[e][v], n = r.exposures || 0;
    const pct = k => n > 0 ? ((r[k] || 0) / n * 100).toFixed(2) + "%" : "–";
    const esc = s => String(s).replace(/[&<>"]/g, c => "&#" + c.charCodeAt(0) + ";");
    rows.push("<tr><td>" + esc(e) + " / " + esc(v) + "</td><td>" + fmtNum(n, 0) + "</td><td>" +
              fmtNum(r.click || 0, 0) + "</td><td>" + pct("click") + "</td><td>" +
              fmtNum(r.purchase || 0, 0) + "</td><td>" + pct("purchase") + "</td><td>" +
              fmtNum(r.revenue || 0, 2) + "</td></tr>");
  }
  table.innerHTML = "<table>" + rows.join("") + "</table>";
}

function render() {
  renderEndpoints();
  const families = ["clickstream", "purchase", "engagement"];
  drawChart("c-events", [
    {name: "total", key: "events.total", color: "#d8dee6", values: seriesOf("events.total")},
    ...families.map((f, i) => ({name: f, key: "events." + f, color: COLORS[i],
                                values: seriesOf("events." + f)}))], v => fmtNum(v));
  drawChart("c-freshness", [
    {name: "p50", key: "freshness.p50", color: COLORS[2], values: seriesOf("freshness.p50")},
    {name: "p99", key: "freshness.p99", color: COLORS[1], values: seriesOf("freshness.p99")}],
    fmtSeconds);
  drawChart("c-latency", [
    {name: "p50", key: "latency.Recommend.p50", color: COLORS[0],
     values: seriesOf("latency.Recommend.p50")},
    {name: "p99", key: "latency.Recommend.p99", color: COLORS[3],
     values: seriesOf("latency.Recommend.p99")}], fmtSeconds);
  const trig = keysWith("triggers.").filter(k => k !== "triggers.total");
  drawChart("c-triggers", lineSet(trig, "triggers."), v => fmtNum(v, 0));
  const dlq = keysWith("dlq.").filter(k => k !== "dlq.total");
  drawChart("c-dlq", lineSet(dlq, "dlq."), v => fmtNum(v, 0));
  drawChart("c-lag", [
    {name: "watermark lag", key: "job.watermark_lag_s", color: COLORS[4],
     values: seriesOf("job.watermark_lag_s")}], fmtSeconds);
  renderModel();
  renderAB();

  const ev = latest("events.total"), p50 = latest("latency.Recommend.p50"),
        p99 = latest("latency.Recommend.p99"), f50 = latest("freshness.p50"),
        f99 = latest("freshness.p99"), rps = latest("rps.Recommend"),
        wm = latest("job.watermark_lag_s"), cat = latest("catalog.items"),
        trg = latest("triggers.total"), dl = latest("dlq.total"),
        wl = latest("writer.consumer_lag");
  setValue("v-events", ev, fmtNum(ev));
  setValue("v-latency-p50", p50, fmtSeconds(p50));
  setValue("v-latency-p99", p99, fmtSeconds(p99));
  setValue("v-freshness-p50", f50, fmtSeconds(f50));
  setValue("v-freshness-p99", f99, fmtSeconds(f99));
  setValue("v-rps", rps, fmtNum(rps));
  setValue("v-watermark-lag", wm, fmtSeconds(wm));
  setValue("v-catalog", cat, fmtNum(cat, 0));
  setValue("v-triggers", trg, fmtNum(trg, 0));
  setValue("v-dlq", dl, fmtNum(dl, 0));
  setValue("v-writer-lag", wl, fmtNum(wl, 0));
  document.getElementById("v-events-window").textContent =
      "rate over " + payload.rate_window_s + " s; percentiles over " +
      payload.quantile_window_s + " s";

  renders += 1;
  const status = document.getElementById("status");
  status.dataset.renders = String(renders);
  status.dataset.points = String(points.length);
  status.textContent = points.length + " points · updated " +
      new Date((lastT || 0) * 1000).toLocaleTimeString();
}

async function refresh() {
  try {
    const url = "/api/series" + (lastT === null ? "" : "?since=" + lastT);
    const response = await fetch(url, {cache: "no-store"});
    payload = await response.json();
    const fresh = payload.points || [];
    points = points.concat(fresh);
    const horizon = (payload.now || 0) - (payload.history_s || 600);
    points = points.filter(p => p.t >= horizon);
    if (points.length) lastT = points[points.length - 1].t;
    render();
  } catch (err) {
    document.getElementById("status").textContent = "dashboard unreachable: " + err;
  }
}
refresh();
setInterval(refresh, 1000);
window.addEventListener("resize", () => { if (payload) render(); });
</script>
</body>
</html>
"""
