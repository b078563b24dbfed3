// tuneforge serve page: vanilla JS, no external resources. User text is only ever set through textContent.
"use strict";

const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";
const COLORS = ["#f4c95d", "#8fd3a8", "#f2a3a3", "#a8c5f0", "#d6b4f0", "#f5b98a", "#9fd9d9", "#d9d29f"];
let info = null;
let imageFile = null;

function el(tag, attrs = {}, text) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

function svg(tag, attrs = {}, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

function fmt(x) {
  if (typeof x !== "number") return String(x);
  if (Number.isInteger(x)) return String(x);
  return Math.abs(x) >= 100 ? x.toFixed(1) : x.toPrecision(4);
}

function pct(p) { return (100 * p).toFixed(1) + "%"; }

// ------------------------------------------------------------------ model card
function renderCard() {
  const parts = String(info.model).split("/").filter(Boolean);
  $("model-name").textContent = parts.length > 1 ? parts[parts.length - 1] : info.model;
  $("model-name").title = info.model;
  $("backend").textContent = info.backend;
  document.title = `tuneforge · ${info.task}`;
  const facts = $("facts");
  const rows = [["task", info.task], ["modality", info.modality]];
  if (info.modality === "text") rows.push(["inputs", info.texts_per_example === 2 ? "text pair" : "one text"]);
  if (info.labels.length) rows.push([`labels (${info.labels.length})`, info.labels.join(", ")]);
  if (info.best_step !== null && info.best_step !== undefined) rows.push(["kept step", info.best_step]);
  const st = info.task_state || {};
  if (st.thresholds && st.thresholds.length) {
    const uniq = [...new Set(st.thresholds)];
    rows.push(["thresholds", uniq.length === 1 ? fmt(uniq[0]) : info.labels.map((l, i) => `${l} ${fmt(st.thresholds[i])}`).join(", ")]);
  }
  for (const [k, v] of rows) { facts.append(el("dt", {}, k), el("dd", {}, String(v))); }
  const table = $("val-metrics");
  const entries = Object.entries(info.validation || {}).filter(([k]) => k !== "samples" && k !== "sentences");
  if (!entries.length) table.replaceWith(el("p", { class: "empty" }, "no summary.json next to this model"));
  for (const [k, v] of entries) {
    const tr = el("tr", k === info.metric ? { class: "key" } : {});
    tr.append(el("td", {}, k === info.metric ? `${k} (kept model's metric)` : k), el("td", {}, fmt(v)));
    table.append(tr);
  }
}

function axisFmt(x) {
  if (Number.isInteger(x)) return String(x);
  const a = Math.abs(x);
  return a < 0.01 || a >= 1e5 ? x.toExponential(1) : Number(x.toPrecision(3)).toString();
}

function lineChart(title, series, xs, kept) {
  const W = 420, H = 170, L = 54, R = 12, T = 24, B = 26;
  const all = series.flatMap((s) => s.values).filter((v) => typeof v === "number");
  const box = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": title });
  const head = svg("text", { x: L, y: 13, class: "title" }, title);
  if (typeof kept === "number") head.append(svg("tspan", { class: "sub", dx: 8 }, `kept at step ${kept}`));
  box.append(head);
  if (!all.length) return box;
  let lo = Math.min(...all), hi = Math.max(...all);
  const flat = hi - lo < 1e-12;
  const ticks = flat ? [lo] : [lo, hi];
  if (flat) { const pad = Math.max(Math.abs(lo) * 0.1, 0.05); lo -= pad; hi += pad; }
  const x0 = Math.min(...xs), x1 = Math.max(...xs) === x0 ? x0 + 1 : Math.max(...xs);
  const X = (x) => L + (W - L - R) * (x - x0) / (x1 - x0);
  const Y = (y) => T + (H - T - B) * (1 - (y - lo) / (hi - lo));
  box.append(svg("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, class: "axis" }));
  box.append(svg("line", { x1: L, y1: T, x2: L, y2: H - B, class: "axis" }));
  for (const v of ticks) box.append(svg("text", { x: L - 6, y: Y(v) + 4, "text-anchor": "end" }, axisFmt(v)));
  if (typeof kept === "number" && kept >= x0 && kept <= x1) {
    box.append(svg("line", { x1: X(kept), y1: T, x2: X(kept), y2: H - B, class: "kept" }));
  }
  box.append(svg("text", { x: L, y: H - 8 }, `step ${x0}`));
  box.append(svg("text", { x: W - R, y: H - 8, "text-anchor": "end" }, `step ${x1}`));
  let lx = W - R;
  series.slice().reverse().forEach((s) => {
    box.append(svg("text", { x: lx, y: 13, "text-anchor": "end", style: `fill:${s.color}` }, s.name));
    lx -= 9 + 6.5 * s.name.length;
  });
  for (const s of series) {
    const pts = xs.map((x, i) => [x, s.values[i]]).filter(([, v]) => typeof v === "number");
    box.append(svg("polyline", { points: pts.map(([x, v]) => `${X(x)},${Y(v)}`).join(" "), fill: "none",
      stroke: s.color, "stroke-width": 2, "stroke-linejoin": "round" }));
    for (const [x, v] of pts) box.append(svg("circle", { cx: X(x), cy: Y(v), r: 2.6, fill: s.color }));
  }
  return box;
}

async function renderCurves() {
  const target = $("curves");
  const data = await (await fetch("/metrics")).json();
  const pts = data.points || [];
  if (!pts.length) { target.append(el("p", { class: "empty" }, "no metrics.jsonl next to this model")); return; }
  const xs = pts.map((p) => p.step);
  const metric = data.metric && data.metric !== "loss" ? data.metric : null;
  const kept = info.best_step;
  if (metric) target.append(lineChart(`validation ${metric}`, [{ name: metric, color: "#2f6fde", values: pts.map((p) => p[metric]) }], xs, kept));
  target.append(lineChart("loss", [
    { name: "train", color: "#e0803a", values: pts.map((p) => p.train_loss) },
    { name: "validation", color: "#2f6fde", values: pts.map((p) => p.loss) },
  ], xs, kept));
}

// ------------------------------------------------------------------ inputs
function setupInputs() {
  if (info.modality === "image") {
    $("image-input").hidden = false;
    const zone = $("drop-zone"), input = $("file-input");
    input.addEventListener("change", () => input.files[0] && pickImage(input.files[0]));
    zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
    zone.addEventListener("dragleave", () => zone.classList.remove("over"));
    zone.addEventListener("drop", (e) => {
      e.preventDefault(); zone.classList.remove("over");
      if (e.dataTransfer.files[0]) pickImage(e.dataTransfer.files[0]);
    });
    zone.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); input.click(); } });
    return;
  }
  $("text-inputs").hidden = false;
  if (info.texts_per_example === 2) { $("pair-b").hidden = false; $("text-a-label").textContent = "First text"; }
  if (info.task === "token_classification") $("text-a").placeholder = "Type a sentence; entities are highlighted…";
  $("text-a").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) $("form").requestSubmit();
  });
}

function pickImage(file) {
  imageFile = file;
  const img = $("preview");
  img.src = URL.createObjectURL(file);
  img.alt = file.name;
  img.hidden = false;
  $("drop-hint").textContent = `${file.name} · drop or click to change`;
}

function requestBody() {
  if (info.modality === "image") {
    if (!imageFile) throw new Error("choose an image first");
    const form = new FormData();
    form.append("images", imageFile, imageFile.name);
    return { body: form };
  }
  const a = $("text-a").value;
  if (!a.trim()) throw new Error("type a text first");
  let item = a;
  if (info.texts_per_example === 2) {
    const b = $("text-b").value;
    if (!b.trim()) throw new Error("type the second text too");
    item = [a, b];
  }
  return { body: JSON.stringify({ inputs: [item] }), headers: { "Content-Type": "application/json" } };
}

// ------------------------------------------------------------------ results
function probRows(entries, chosen, thresholds) {
  const box = el("div", { class: "probs" });
  for (const [name, p] of entries) {
    const row = el("div", { class: "prob-row" + (chosen.has(name) ? " chosen" : ""), "data-label": name });
    const track = el("div", { class: "prob-track" });
    const bar = el("div", { class: "prob-bar", role: "meter", "aria-valuemin": "0", "aria-valuemax": "1",
      "aria-valuenow": String(p), "aria-label": name });
    bar.style.width = pct(Math.max(0, Math.min(1, p)));
    track.append(bar);
    if (thresholds && thresholds[name] !== undefined) {
      const t = el("div", { class: "threshold", title: `threshold ${thresholds[name]}` });
      t.style.left = pct(thresholds[name]);
      track.append(t);
    }
    row.append(el("span", { class: "prob-name", title: name }, name), track, el("span", { class: "prob-value" }, pct(p)));
    box.append(row);
  }
  return box;
}

function renderClassification(out, target) {
  const top = el("div", { class: "top" });
  top.append(el("span", { class: "caption" }, "prediction"), el("span", { class: "top-label", id: "top-label" }, out.label),
    el("span", { class: "top-score" }, `${pct(out.score)} confidence`));
  target.append(top, probRows(Object.entries(out.probabilities), new Set([out.label])));
}

function renderMultilabel(out, target) {
  const chips = el("div", { class: "chips top", id: "chosen-labels" });
  if (!out.labels.length) chips.append(el("span", { class: "chip none" }, "none of the labels"));
  for (const l of out.labels) chips.append(el("span", { class: "chip" }, l));
  const st = info.task_state || {};
  const thresholds = {};
  info.labels.forEach((l, i) => { if (st.thresholds) thresholds[l] = st.thresholds[i]; });
  target.append(chips, probRows(Object.entries(out.scores), new Set(out.labels), thresholds),
    el("p", { class: "note" }, "the tick on each bar is that label's decision threshold (tuned on validation)"));
}

function renderRegression(out, target) {
  const top = el("div", { class: "top" });
  top.append(el("span", { class: "value", id: "value" }, fmt(out.value)), el("span", { class: "top-score" }, "predicted value"));
  target.append(top);
}

function renderEntities(out, text, target) {
  const types = [...new Set(out.entities.map((e) => e.type))];
  const color = (t) => COLORS[types.indexOf(t) % COLORS.length];
  const box = el("div", { class: "ner-text", id: "ner-text" });
  let at = 0;
  for (const e of out.entities) {
    if (e.start === undefined) continue;
    box.append(document.createTextNode(text.slice(at, e.start)));
    const span = el("mark", { class: "ent", "data-type": e.type, title: `${e.type} · ${pct(e.score)}` }, text.slice(e.start, e.end));
    span.style.background = color(e.type);
    span.append(el("sup", {}, e.type));
    box.append(span);
    at = e.end;
  }
  box.append(document.createTextNode(text.slice(at)));
  const legend = el("div", { class: "legend" });
  if (!out.entities.length) legend.append(el("span", {}, "no entities found"));
  for (const t of types) {
    const item = el("span");
    const sw = el("span", { class: "swatch" });
    sw.style.background = color(t);
    item.append(sw, document.createTextNode(`${t} (${out.entities.filter((e) => e.type === t).length})`));
    legend.append(item);
  }
  target.append(box, legend);
}

function renderResult(out, sent) {
  const target = $("result");
  target.replaceChildren();
  if (info.task === "token_classification") renderEntities(out, sent, target);
  else if ("probabilities" in out) renderClassification(out, target);
  else if ("scores" in out) renderMultilabel(out, target);
  else if ("value" in out) renderRegression(out, target);
  else target.append(el("pre", {}, JSON.stringify(out, null, 2)));
}

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

async function predict(event) {
  event.preventDefault();
  showError("");
  let request;
  try { request = requestBody(); } catch (e) { showError(e.message); return; }
  const btn = $("predict-btn");
  btn.disabled = true;
  const t0 = performance.now();
  try {
    const res = await fetch("/predict", { method: "POST", ...request });
    const data = await res.json();
    if (!res.ok) { showError(data.error || `HTTP ${res.status}`); return; }
    $("latency").textContent = `${Math.round(performance.now() - t0)} ms`;
    renderResult(data.predictions[0], $("text-a").value);
  } catch (e) {
    showError(`request failed: ${e.message}`);
  } finally {
    btn.disabled = false;
  }
}

async function main() {
  try {
    info = await (await fetch("/info")).json();
  } catch (e) {
    showError(`cannot reach the server: ${e.message}`);
    return;
  }
  renderCard();
  setupInputs();
  $("form").addEventListener("submit", predict);
  renderCurves().catch((e) => $("curves").append(el("p", { class: "empty" }, `curves unavailable: ${e.message}`)));
  document.body.dataset.ready = "1";
}

main();
