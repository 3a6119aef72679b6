// genlab explorer: plain JavaScript, no build step, no other host. Every number comes from the server's JSON API.
"use strict";

const $ = (id) => document.getElementById(id);
const el = (tag, props = {}, ...children) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === "class") e.className = v; else if (k === "text") e.textContent = v;
    else if (k.startsWith("data-")) e.setAttribute(k, v); else e[k] = v;
  }
  for (const c of children) e.append(c);
  return e;
};
const LABEL_COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
                       "#bcbd22", "#17becf"];
let MODELS = [];
let pending = 0;

function status(text, isError = false) {
  const s = $("status");
  if (s.textContent === text && s.classList.contains("error") === isError) return;  // no repeats for screen readers
  s.textContent = text;
  s.classList.toggle("error", isError);
}

// ``clears``: a success clears an earlier error in the status line (not for the background poll of a watched
// run, which would wipe a user's error within a second and a half).
async function api(method, path, body, {clears = true} = {}) {
  pending += 1;
  try {
    let r;
    try {
      r = await fetch(path, {method, headers: body ? {"Content-Type": "application/json"} : {},
                             body: body ? JSON.stringify(body) : undefined});
    } catch (e) {
      throw new Error("the server does not answer (is genlab serve still running?)");
    }
    const data = await r.json().catch(() => ({}));
    if (!r.ok) throw new Error(data.error || `HTTP ${r.status}`);
    if (clears && $("status").classList.contains("error")) status("ready");  // an earlier request's error is over
    return data;
  } catch (e) {
    status(`${path}: ${e.message}`, true);
    throw e;
  } finally {
    pending -= 1;
  }
}

// An async event handler whose failure is already in the status line (api() put it there): no unhandled rejection.
const quietly = (handler) => (...args) => { handler(...args).catch(() => {}); };

const MAX_SEED = 2147483646;  // the largest seed every endpoint takes (a walk also draws from seed + 1)
// The whole-number seed in ``input``, or null (with the reason in the status line) when it is not one.
function seedOf(input) {
  const s = Number(input.value);
  if (input.value.trim() === "" || !Number.isInteger(s) || s < 0 || s > MAX_SEED) {
    status(`the seed must be a whole number from 0 to ${MAX_SEED}, got ${JSON.stringify(input.value)}`, true);
    return null;
  }
  return s;
}

// An image of the API (base64 of 784 uint8 bytes, 255 = ink) painted into a 28 x 28 canvas; "heat" colours it.
function paint(canvas, b64, heat = false) {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  const ctx = canvas.getContext("2d");
  const img = ctx.createImageData(28, 28);
  for (let i = 0; i < 784; i++) {
    const v = bytes[i];
    img.data.set(heat ? [v, v * 0.35, 0, 255] : [v, v, v, 255], 4 * i);
  }
  ctx.putImageData(img, 0, 0);
  canvas.dataset.image = b64;
}

function imageFigure(b64, caption, size = "", heat = false) {
  const c = el("canvas", {width: 28, height: 28, class: `img28 ${size}`});
  c.setAttribute("role", "img");
  c.setAttribute("aria-label", caption || "generated image");
  paint(c, b64, heat);
  return el("figure", {}, c, el("figcaption", {text: caption}));
}

const fmt = (x) => (x === null || x === undefined ? "n/a" : Math.abs(x) >= 1000 || (Math.abs(x) < 0.01 && x !== 0)
  ? x.toExponential(2) : x.toFixed(Math.abs(x) >= 100 ? 1 : 3));

// -- draw ----------------------------------------------------------------------------------------------------
const SEND_SIDE = 56;  // the drawing goes to the server at 56 x 56; it scales and centres it to 28 x 28
let hasInk = false, inFlight = false, dirty = false, lastInput = null;
let drawing = 0;  // counts Clears: an answer about a drawing that was cleared meanwhile is dropped

function setupPad() {
  const pad = $("pad"), ctx = pad.getContext("2d");
  const clear = () => { ctx.fillStyle = "#000"; ctx.fillRect(0, 0, pad.width, pad.height); hasInk = false; };
  clear();
  ctx.strokeStyle = "#fff"; ctx.lineWidth = 18; ctx.lineCap = "round"; ctx.lineJoin = "round";
  let last = null;
  const pos = (e) => { const r = pad.getBoundingClientRect();
    return [(e.clientX - r.left) * pad.width / r.width, (e.clientY - r.top) * pad.height / r.height]; };
  pad.addEventListener("pointerdown", (e) => { pad.setPointerCapture(e.pointerId); last = pos(e);
    ctx.beginPath(); ctx.arc(last[0], last[1], ctx.lineWidth / 2, 0, 2 * Math.PI); ctx.fillStyle = "#fff"; ctx.fill();
    hasInk = true; requestDraw(); });
  pad.addEventListener("pointermove", (e) => { if (!last) return; const p = pos(e);
    ctx.beginPath(); ctx.moveTo(...last); ctx.lineTo(...p); ctx.stroke(); last = p; requestDraw(); });
  const end = () => { if (last) { last = null; requestDraw(); } };
  pad.addEventListener("pointerup", end);
  pad.addEventListener("pointercancel", end);
  $("clear").addEventListener("click", () => { clear(); drawing += 1; lastInput = null; resetCards(); });
  // A test digit drawn on the pad: every model's answer, and Descend, without a pointer.
  if (MODELS.length) $("digit-index").max = MODELS[0].test_images - 1;
  $("digit-draw").addEventListener("click", quietly(async () => {
    const index = Number($("digit-index").value);
    if (!Number.isInteger(index) || index < 0) { status("the test digit must be a whole number from 0", true); return; }
    const r = await api("POST", "/api/digit", {model: MODELS[0].name, index});
    $("digit-index").value = r.index;
    const small = el("canvas", {width: 28, height: 28});
    paint(small, r.image);
    clear();
    ctx.drawImage(small, 0, 0, pad.width, pad.height);
    drawing += 1; hasInk = true; requestDraw();
  }));
}

function drawingPixels() {
  const small = el("canvas", {width: SEND_SIDE, height: SEND_SIDE});
  const sctx = small.getContext("2d");
  sctx.imageSmoothingQuality = "high";
  sctx.drawImage($("pad"), 0, 0, SEND_SIDE, SEND_SIDE);
  const data = sctx.getImageData(0, 0, SEND_SIDE, SEND_SIDE).data;
  let bytes = "";  // base64 of the red channel, one uint8 per pixel, as the API takes drawings
  for (let i = 0; i < SEND_SIDE * SEND_SIDE; i++) bytes += String.fromCharCode(data[4 * i]);
  return btoa(bytes);
}

function requestDraw() {
  if (!hasInk || !MODELS.length) return;  // a server that only watches runs has no one to ask
  if (inFlight) { dirty = true; return; }
  inFlight = true; dirty = false;
  const image = drawingPixels(), asked = drawing;
  api("POST", "/api/draw", {image}).then((r) => {
    if (asked !== drawing) return;  // cleared while the server answered
    lastInput = image;
    paint($("input28"), r.input);
    for (const [name, res] of Object.entries(r.models)) updateCard(name, res);
    status(`${Object.keys(r.models).length} models answered`);
  }).catch(() => {}).finally(() => { inFlight = false; if (dirty) requestDraw(); });
}

function buildCards() {
  const box = $("cards");
  for (const m of MODELS) {
    const card = el("div", {class: "card", "data-model": m.name});
    card.append(el("h3", {text: `${m.name}`, title: m.energy_doc},
      el("span", {class: "hint", text: ` (${m.model}, epoch ${m.epochs})`})));
    if (m.reconstructs) {
      card.append(el("div", {class: "pair"},
        el("figure", {}, el("canvas", {width: 28, height: 28, class: "img28 mid recon"}), el("figcaption", {text: "reconstruction"})),
        el("figure", {}, el("canvas", {width: 28, height: 28, class: "img28 mid err"}), el("figcaption", {text: "error"}))));
    } else {
      card.append(el("p", {class: "hint", text: "no reconstruction (a discriminator's energy only)"}));
    }
    card.append(el("div", {}, "energy ", el("span", {class: "energy", text: "-"})));
    card.append(el("div", {class: "gauge", title: "where the energy falls among the test digits' energies"},
      el("div", {class: "marker"})));
    card.append(el("div", {class: "gauge-label", text: `test median ${fmt(m.energy_percentiles["50"])}`}));
    box.append(card);
  }
}

function resetCards() {
  const blank = (c) => { c.getContext("2d").clearRect(0, 0, 28, 28); delete c.dataset.image; };
  blank($("input28"));
  for (const card of document.querySelectorAll(".card")) {
    card.querySelector(".energy").textContent = "-";
    delete card.dataset.energy;
    card.querySelector(".marker").style.left = "0";
    const m = MODELS.find((x) => x.name === card.dataset.model);
    card.querySelector(".gauge-label").textContent = `test median ${fmt(m.energy_percentiles["50"])}`;
    for (const c of card.querySelectorAll("canvas")) blank(c);
  }
}

function updateCard(name, res) {
  const card = document.querySelector(`.card[data-model="${CSS.escape(name)}"]`);
  if (!card) return;
  card.querySelector(".energy").textContent = fmt(res.energy);
  card.dataset.energy = res.energy;
  if (res.reconstruction) {
    paint(card.querySelector("canvas.recon"), res.reconstruction);
    paint(card.querySelector("canvas.err"), res.error, true);
  }
  card.querySelector(".marker").style.left = `calc(${res.percentile}% - 1px)`;
  const m = MODELS.find((x) => x.name === name);
  card.querySelector(".gauge-label").textContent =
    `above ${res.percentile.toFixed(1)}% of test digits (median ${fmt(m.energy_percentiles["50"])})`;
}

function setupDescend() {
  const sel = $("descend-model");
  for (const m of MODELS) sel.append(el("option", {value: m.name, text: m.name}));
  $("descend").addEventListener("click", quietly(async () => {
    if (!lastInput) { status("draw something first", true); return; }
    const r = await api("POST", "/api/descend", {model: sel.value, image: lastInput,
      steps: Number($("descend-steps").value), step_size: Number($("descend-size").value)});
    const strip = $("descend-frames");
    strip.replaceChildren(...r.frames.map((f, i) => imageFigure(f, `${i === 0 ? "start" : "step " + i}: ${fmt(r.energies[i])}`, "mid")));
  }));
}

// -- corrupt and repair -----------------------------------------------------------------------------------------
function setupRepair() {
  const daes = MODELS.filter((m) => m.model === "dae");
  if (!daes.length) { $("repair-none").hidden = false; $("repair-controls").hidden = true; return; }
  const sel = $("repair-model");
  for (const m of daes) sel.append(el("option", {value: m.name, text: m.name}));
  const index = $("repair-index");
  const max = () => daes.find((m) => m.name === sel.value).test_images - 1;
  index.max = max();
  const run = quietly(async () => {
    const rate = Number($("repair-rate").value);
    $("repair-rate-out").textContent = rate.toFixed(2);
    const seed = seedOf($("repair-seed"));
    if (seed === null) return;
    const wanted = Number(index.value);
    const r = await api("POST", "/api/repair", {model: sel.value, rate, seed,
      index: Number.isInteger(wanted) ? Math.min(Math.max(0, wanted), max()) : 0});
    index.value = r.index;
    const items = [imageFigure(r.clean, `clean (label ${r.label})`, "large"),
                   imageFigure(r.corrupted, `corrupted: ${r.dropped} of 784 dropped`, "large")];
    for (const [method, rep] of Object.entries(r.repairs)) {
      const f = imageFigure(rep.image, `${rep.title}: ${fmt(rep.psnr)} dB (${fmt(rep.psnr_dropped)} dB)`, "large");
      f.classList.add("repair-item"); f.dataset.method = method; f.dataset.psnr = rep.psnr;
      items.push(f);
    }
    $("repair-out").replaceChildren(...items);
  });
  for (const id of ["repair-model", "repair-index", "repair-rate", "repair-seed"]) $(id).addEventListener("change", run);
  $("repair-rate").addEventListener("input", () => { $("repair-rate-out").textContent = Number($("repair-rate").value).toFixed(2); });
  $("repair-random").addEventListener("click", () => { index.value = Math.floor(Math.random() * (max() + 1)); run(); });
  run();
}

// -- latent map ---------------------------------------------------------------------------------------------------
function setupLatent() {
  const vaes = MODELS.filter((m) => m.latent_dim !== undefined);
  if (!vaes.length) { $("latent-none").hidden = false; $("latent-box").hidden = true; return; }
  const sel = $("latent-model");
  for (const m of vaes) sel.append(el("option", {value: m.name, text: m.name}));
  $("latent-legend").replaceChildren(...LABEL_COLOURS.map((c, i) => { const s = el("span", {text: String(i)});
    s.style.setProperty("--c", c); return s; }));
  const canvas = $("latent-map"), ctx = canvas.getContext("2d");
  let pts = null, toScreen, toLayout, hoverBusy = false, hoverNext = null, chosen = [];
  const render = (mark) => {
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    pts.xy.forEach(([x, y], i) => { const [sx, sy] = toScreen(x, y);
      ctx.fillStyle = LABEL_COLOURS[pts.labels[i]]; ctx.globalAlpha = 0.75;
      ctx.beginPath(); ctx.arc(sx, sy, 2.2, 0, 2 * Math.PI); ctx.fill(); });
    ctx.globalAlpha = 1;
    const ring = (i, colour, r) => { const [sx, sy] = toScreen(...pts.xy[i]); ctx.strokeStyle = colour; ctx.lineWidth = 2;
      ctx.beginPath(); ctx.arc(sx, sy, r, 0, 2 * Math.PI); ctx.stroke(); };
    chosen.forEach((i, k) => ring(i, k ? "#c8423b" : "#2f6fd6", 7));
    if (chosen.length === 2) { ctx.strokeStyle = "#333"; ctx.setLineDash([4, 3]); ctx.beginPath();
      ctx.moveTo(...toScreen(...pts.xy[chosen[0]])); ctx.lineTo(...toScreen(...pts.xy[chosen[1]])); ctx.stroke(); ctx.setLineDash([]); }
    if (mark !== undefined) ring(mark, "#000", 5);
  };
  const load = async () => {
    pts = await api("GET", `/api/latent/${encodeURIComponent(sel.value)}`);
    const xs = pts.xy.map((p) => p[0]), ys = pts.xy.map((p) => p[1]);
    const [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
    const pad = 14, w = canvas.width - 2 * pad, h = canvas.height - 2 * pad;
    // One scale for both axes, so distances on screen are distances in the layout (hover and click pick the
    // point under the cursor); the map is centred in the canvas.
    const scale = Math.min(w / ((x1 - x0) || 1), h / ((y1 - y0) || 1));
    const ox = pad + (w - (x1 - x0) * scale) / 2, oy = pad + (h - (y1 - y0) * scale) / 2;
    toScreen = (x, y) => [ox + (x - x0) * scale, oy + (y1 - y) * scale];
    toLayout = (px, py) => [x0 + (px - ox) / scale, y1 - (py - oy) / scale];
    chosen = [];
    $("latent-info").textContent = `PCA of ${pts.xy.length} test means (d = ${pts.latent_dim}); the two axes hold ` +
      `${(100 * pts.explained[0]).toFixed(0)}% and ${(100 * (pts.explained[1] || 0)).toFixed(0)}% of their variance.`;
    render();
  };
  const hover = async (x, y) => {
    if (hoverBusy) { hoverNext = [x, y]; return; }
    hoverBusy = true;
    try {
      const r = await api("POST", "/api/latent/decode", {model: sel.value, x, y});
      paint($("latent-hover"), r.image);
      $("latent-hover-caption").textContent = `test digit ${r.index} (label ${r.label}), decoded mean`;
      render(r.index);
    } catch (e) { /* shown in the status line */ } finally {
      hoverBusy = false;
      if (hoverNext) { const n = hoverNext; hoverNext = null; hover(...n); }
    }
  };
  const layoutOf = (e) => { const r = canvas.getBoundingClientRect();
    return toLayout((e.clientX - r.left) * canvas.width / r.width, (e.clientY - r.top) * canvas.height / r.height); };
  canvas.addEventListener("mousemove", (e) => { if (pts) hover(...layoutOf(e)); });
  canvas.addEventListener("click", quietly(async (e) => {
    if (!pts) return;
    const [x, y] = layoutOf(e);
    let best = 0, bd = Infinity;
    pts.xy.forEach(([px, py], i) => { const d = (px - x) ** 2 + (py - y) ** 2; if (d < bd) { bd = d; best = i; } });
    chosen = chosen.length === 2 ? [best] : [...chosen, best];
    render();
    if (chosen.length < 2) { $("latent-ab").textContent = `A: test digit ${best} (label ${pts.labels[best]}); click a second point`; return; }
    const [a, b] = chosen;
    $("latent-ab").textContent = `from test digit ${a} (label ${pts.labels[a]}) to ${b} (label ${pts.labels[b]})`;
    const r = await api("POST", "/api/latent/interpolate", {model: sel.value, a, b, steps: 10});
    $("latent-strip").replaceChildren(...r.images.map((im, i) => imageFigure(im, `${i}`)));
  }));
  $("latent-sample").addEventListener("click", quietly(async () => {
    const r = await api("POST", "/api/sample", {model: sel.value, n: 10, seed: Math.floor(Math.random() * 1e9)});
    $("latent-samples").replaceChildren(...r.images.map((im, i) => imageFigure(im, fmt(r.energies[i]))));
  }));
  sel.addEventListener("change", quietly(load));
  quietly(load)();
}

// -- generators ---------------------------------------------------------------------------------------------------
function setupGenerators() {
  const gans = MODELS.filter((m) => m.nz !== undefined);
  if (!gans.length) { $("generators-none").hidden = false; return; }
  for (const m of gans) {
    const seed = el("input", {type: "number", value: 0, min: 0, max: MAX_SEED});
    const grid = el("div", {class: "grid"}), walk = el("div", {class: "strip"});
    // A conditional model (cvae, cdcgan) gets a digit picker; its walk in z is then a style slider for that digit.
    const classes = m.classes || [...Array(10).keys()];  // the labels the run learned
    const digit = el("select", {class: "digit"}, el("option", {value: "", text: "each in turn"}),
      ...classes.map((d) => el("option", {value: String(d), text: String(d)})));
    const card = el("div", {class: "gen-card", "data-model": m.name},
      el("h3", {text: `${m.name}: samples and the ${m.conditional ? "model's label-free" : "discriminator's"} energy of each`}),
      el("label", {}, "noise seed ", seed), " ", el("button", {type: "button", text: "New noise",
        onclick: () => { const s = seedOf(seed); if (s !== null) { seed.value = (s + 1) % (MAX_SEED + 1); run(); } }}),
      ...(m.conditional ? [" ", el("label", {}, "digit ", digit)] : []),
      grid, el("h3", {text: m.conditional ? "Style: one direction in z, the digit kept (t from -3 to 3)"
                                          : "A walk along one direction in z (t from -3 to 3)"}), walk);
    const run = quietly(async () => {
      const s = seedOf(seed);
      if (s === null) return;
      const label = m.conditional && digit.value !== "" ? {label: Number(digit.value)} : {};
      const g = await api("POST", "/api/sample", {model: m.name, n: 16, seed: s, ...label});
      grid.replaceChildren(...g.images.map((im, i) => imageFigure(im, fmt(g.energies[i]))));
      const w = await api("POST", "/api/walk", {model: m.name, seed: s, steps: 9, scale: 3, ...label});
      walk.replaceChildren(...w.images.map((im, i) => imageFigure(im, `t ${w.t[i].toFixed(1)}: ${fmt(w.energies[i])}`)));
    });
    seed.addEventListener("change", run);
    digit.addEventListener("change", run);
    $("generator-cards").append(card);
    run();
  }
}

// -- watch training ------------------------------------------------------------------------------------------------
function drawChart(canvas, metrics, key) {
  const ctx = canvas.getContext("2d"), W = canvas.width, H = canvas.height, pad = 36;
  ctx.clearRect(0, 0, W, H);
  const pts = metrics.filter((m) => m[key] !== undefined).map((m) => [m.epoch, m[key]]).sort((a, b) => a[0] - b[0]);
  ctx.fillStyle = "#5b6478"; ctx.font = "11px system-ui";
  if (!pts.length) { ctx.fillText("no metrics yet", pad, H / 2); return; }
  const xs = pts.map((p) => p[0]), ys = pts.map((p) => p[1]);
  const [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
  const sx = (W - 2 * pad) / ((x1 - x0) || 1), sy = (H - 2 * pad) / ((y1 - y0) || 1);
  const X = (x) => pad + (x - x0) * sx, Y = (y) => H - pad - (y - y0) * sy;
  ctx.strokeStyle = "#d7dbe3"; ctx.strokeRect(pad, pad, W - 2 * pad, H - 2 * pad);
  ctx.fillText(fmt(y1), 2, pad + 4); ctx.fillText(fmt(y0), 2, H - pad + 4);
  ctx.fillText(`epoch ${x0}`, pad, H - pad + 16); ctx.fillText(`${x1}`, W - pad - 10, H - pad + 16);
  ctx.strokeStyle = "#2f6fd6"; ctx.lineWidth = 2; ctx.beginPath();
  pts.forEach(([x, y], i) => (i ? ctx.lineTo(X(x), Y(y)) : ctx.moveTo(X(x), Y(y))));
  ctx.stroke();
  for (const [x, y] of pts) { ctx.fillStyle = "#2f6fd6"; ctx.fillRect(X(x) - 2, Y(y) - 2, 4, 4); }
}

const watchViews = {};
function watchView(run) {
  if (watchViews[run.name]) return watchViews[run.name];
  const select = el("select"), chart = el("canvas", {class: "chart", width: 520, height: 220});
  const v = {select, chart, key: null, epoch: el("span", {class: "epoch"}),
             last: el("table", {class: "last"}), samples: el("div", {class: "grid"}), figures: el("div", {class: "figures"}),
             samplesTitle: el("h3", {text: "samples of the latest checkpoint (fixed noise)", hidden: true}),
             figKey: "", sampleKey: ""};
  select.addEventListener("change", () => { v.key = select.value; drawChart(chart, v.metrics || [], v.key); });
  const box = el("div", {class: "watch-run", "data-run": run.name},
    el("h3", {}, `${run.name}: `, v.epoch), el("div", {class: "row"},
      el("div", {}, el("label", {}, "metric ", select), chart), el("div", {}, v.last)),
    v.samplesTitle, v.samples, el("h3", {text: "latest figures"}), v.figures);
  v.box = box;
  $("watch-runs").append(box);
  watchViews[run.name] = v;
  return v;
}

async function pollWatch() {
  let state;
  try { state = await api("GET", "/api/watch", undefined, {clears: false}); } catch (e) { setTimeout(pollWatch, 4000); return; }
  const s = $("status");  // an earlier failed poll's error is over once a poll answers
  if (s.classList.contains("error") && s.textContent.startsWith("/api/watch:")) status("watching again");
  const names = new Set(state.runs.map((run) => run.name));
  for (const [name, v] of Object.entries(watchViews)) {  // a server restarted with other --watch runs
    if (!names.has(name)) { v.box.remove(); delete watchViews[name]; }
  }
  for (const run of state.runs) {
    const v = watchView(run);
    v.metrics = run.metrics;
    const keys = [...new Set(run.metrics.flatMap((m) => Object.keys(m)))].filter((k) => k !== "epoch" && k !== "step");
    if (keys.join() !== [...v.select.options].map((o) => o.value).join()) {
      v.select.replaceChildren(...keys.map((k) => el("option", {value: k, text: k})));
      if (!v.key || !keys.includes(v.key)) v.key = keys.find((k) => k === "test/loss") || keys[0] || null;
      if (v.key) v.select.value = v.key;
    }
    const latest = run.metrics.reduce((a, m) => (a && a.epoch > m.epoch ? a : m), null);
    v.epoch.textContent = latest ? `epoch ${latest.epoch}${run.note ? ` (${run.note})` : ""}`
                                 : (run.note || "waiting for the first epoch");
    v.epoch.dataset.epochs = run.metrics.length;
    v.last.replaceChildren(...Object.entries(latest || {}).map(([k, x]) =>
      el("tr", {}, el("td", {text: k}), el("td", {text: fmt(x)}))));
    drawChart(v.chart, run.metrics, v.key);
    const sampleKey = `${run.sample_epoch}:${run.samples.length}`;
    if (sampleKey !== v.sampleKey) { v.sampleKey = sampleKey; v.samples.replaceChildren(...run.samples.map((s) => imageFigure(s, ""))); }
    v.samplesTitle.hidden = !run.samples.length;
    const figKey = run.figures.map((f) => `${f.name}@${f.mtime}`).join();
    if (figKey !== v.figKey) {
      v.figKey = figKey;
      v.figures.replaceChildren(...run.figures.slice(0, 6).map((f) => el("img", {alt: f.name, title: f.name,
        src: `/api/watch/${encodeURIComponent(run.name)}/${encodeURIComponent(f.name)}?v=${f.mtime}`})));
    }
  }
  setTimeout(pollWatch, 1500);
}

// -- start --------------------------------------------------------------------------------------------------------
async function main() {
  const info = await api("GET", "/api/models");
  MODELS = info.models;
  status(MODELS.length ? `${MODELS.length} models: ${MODELS.map((m) => m.name).join(", ")}` : "no models loaded");
  if (!MODELS.length) { $("draw-none").hidden = false; $("draw-box").hidden = true; }
  setupPad(); buildCards(); setupDescend(); setupRepair(); setupLatent(); setupGenerators();
  if (info.watch.length) { $("watch-none").hidden = true; pollWatch(); }
  document.body.dataset.ready = "1";
}
main().catch(() => {});
