// The stepserve playground: calls the public API (GET /v1/models, POST /v1/samples, streamed or not) and draws
// the samples it answers (format "json") on canvases: a scatter for 2-D models, an image grid for image models.
"use strict";

const ROOT = document.querySelector('meta[name="stepserve-root"]').content;
const K_STRIP = [1, 2, 5, 10, 50];
const W_STRIP = [0, 1, 3, 5, 8];
// Data-space box of the 2-D scatter: fixed, so panels of a strip compare at the same scale.
const SCATTER_BOX = { x0: -2, x1: 3, y0: -1.5, y1: 2 };
const $ = (id) => document.getElementById(id);
let models = {};

// Timings the page exposes for measurement: click to first drawn samples, in milliseconds.
window.playground = { clickToDrawMs: null, busy: false };

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("api_key").value.trim();
  if (key) h.Authorization = `Bearer ${key}`;
  return h;
}

// An API error as the API words it: its message and the field it names.
function showError(body, status) {
  const e = body && body.error ? body.error : { status, field: null, message: String(body) };
  $("error").textContent = `${e.status || status} ${e.field ? `(${e.field}) ` : ""}${e.message}`;
  $("error").hidden = false;
}

function clearError() {
  $("error").hidden = true;
  $("error").textContent = "";
}

async function getJson(path) {
  const r = await fetch(ROOT + path, { headers: headers() });
  const body = await r.json().catch(() => r.statusText);
  if (!r.ok) throw Object.assign(new Error("api"), { body, status: r.status });
  return body;
}

// A number field as the request sends it: a number when it reads as one, else the text, so that the API
// (not the page) says what is wrong with it.
function numberField(id) {
  const v = $(id).value.trim();
  if (v === "") return null;
  const n = Number(v);
  return Number.isFinite(n) ? n : v;
}

function requestBody(overrides = {}) {
  const body = {
    model: $("model").value,
    sampler: $("sampler").value,
    steps: numberField("steps"),
    num_samples: numberField("num_samples"),
  };
  for (const [field, value] of [
    ["guidance", numberField("guidance")],
    ["class_label", $("class_label").value === "" ? null : Number($("class_label").value)],
    ["seed", numberField("seed")],
  ]) {
    if (value !== null) body[field] = value;
  }
  return { ...body, ...overrides };
}

async function postSamples(body) {
  const r = await fetch(`${ROOT}/v1/samples`, { method: "POST", headers: headers(), body: JSON.stringify(body) });
  const out = await r.json().catch(() => r.statusText);
  if (!r.ok) throw Object.assign(new Error("api"), { body: out, status: r.status });
  return out;
}

// ---- drawing -------------------------------------------------------------------------------------------

function draw(canvas, samples, shape) {
  const ctx = canvas.getContext("2d");
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  if (shape.length === 2 && shape[1] === 2) drawScatter(canvas, ctx, samples);
  else drawImages(canvas, ctx, samples, shape);
  canvas.dataset.drawn = String(shape[0]);
}

function drawScatter(canvas, ctx, points) {
  const b = SCATTER_BOX;
  const sx = canvas.width / (b.x1 - b.x0);
  const sy = canvas.height / (b.y1 - b.y0);
  ctx.strokeStyle = "#e6e6e6";
  ctx.beginPath();
  ctx.moveTo(-b.x0 * sx, 0);
  ctx.lineTo(-b.x0 * sx, canvas.height);
  ctx.moveTo(0, b.y1 * sy);
  ctx.lineTo(canvas.width, b.y1 * sy);
  ctx.stroke();
  ctx.fillStyle = "rgba(32, 80, 190, 0.7)";
  const r = Math.max(1.5, canvas.width / 160);
  for (const [x, y] of points) {
    ctx.beginPath();
    ctx.arc((x - b.x0) * sx, (b.y1 - y) * sy, r, 0, 2 * Math.PI);
    ctx.fill();
  }
}

// Images (N, C, H, W) in [0, 1] (C = 1 grey or 3 RGB) as a square grid.
function drawImages(canvas, ctx, images, shape) {
  const [n, c, h, w] = shape.length === 4 ? shape : [shape[0], 1, shape[1], shape[2]];
  const cols = Math.ceil(Math.sqrt(n));
  const rows = Math.ceil(n / cols);
  const tile = document.createElement("canvas");
  tile.width = cols * (w + 1);
  tile.height = rows * (h + 1);
  const tctx = tile.getContext("2d");
  const img = tctx.createImageData(tile.width, tile.height);
  img.data.fill(255);
  images.forEach((im, k) => {
    const ox = (k % cols) * (w + 1);
    const oy = Math.floor(k / cols) * (h + 1);
    for (let i = 0; i < h; i++) {
      for (let j = 0; j < w; j++) {
        const p = 4 * ((oy + i) * tile.width + ox + j);
        for (let ch = 0; ch < 3; ch++) {
          const v = c === 1 ? im[0][i][j] : im[ch][i][j];
          img.data[p + ch] = Math.round(255 * (1 - Math.min(1, Math.max(0, v)))); // ink dark on white
        }
      }
    }
  });
  tctx.putImageData(img, 0, 0);
  ctx.imageSmoothingEnabled = false;
  const scale = Math.min(canvas.width / tile.width, canvas.height / tile.height);
  ctx.drawImage(tile, 0, 0, tile.width * scale, tile.height * scale);
}

function showFacts(out, latencyMs) {
  $("nfe").textContent = String(out.nfe);
  $("latency").textContent = `${latencyMs.toFixed(0)} ms`;
  $("server-ms").textContent = `${out.timing.total_ms.toFixed(1)} ms`;
  $("seed-out").textContent = String(out.seed);
}

function setProgress(fraction) {
  const pct = Math.round(100 * fraction);
  $("progress").hidden = false;
  $("progress-fill").style.width = `${pct}%`;
  $("progress-text").textContent = `${pct} %`;
  $("progress").dataset.percent = String(pct);
}

// ---- actions -------------------------------------------------------------------------------------------

async function run(event) {
  event.preventDefault();
  const t0 = performance.now();
  clearError();
  try {
    const out = await postSamples(requestBody());
    draw($("main"), out.samples, out.shape);
    window.playground.clickToDrawMs = performance.now() - t0;
    showFacts(out, window.playground.clickToDrawMs);
  } catch (e) {
    showError(e.body, e.status);
  }
}

// Server-sent events from a fetch body: calls onEvent(name, data) for each complete event.
async function readEvents(response, onEvent) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      let name = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) name = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).trimStart());
      }
      if (data.length) onEvent(name, JSON.parse(data.join("\n")));
    }
  }
}

async function stream() {
  const t0 = performance.now();
  clearError();
  setProgress(0);
  const body = requestBody({ stream: true, preview_every: numberField("preview_every") });
  if (body.preview_every === null) delete body.preview_every;
  try {
    const r = await fetch(`${ROOT}/v1/samples`, { method: "POST", headers: headers(), body: JSON.stringify(body) });
    if (!r.ok) {
      showError(await r.json().catch(() => r.statusText), r.status);
      return;
    }
    await readEvents(r, (name, data) => {
      if (name === "progress") {
        setProgress(data.step / data.steps);
        $("nfe").textContent = String(data.nfe);
        if (data.preview) draw($("main"), data.preview, [data.preview.length, ...shapeOf(data.preview[0])]);
      } else if (name === "result") {
        setProgress(1);
        draw($("main"), data.samples, data.shape);
        showFacts(data, performance.now() - t0);
      } else if (name === "error") {
        showError(data, data.error && data.error.status);
      }
    });
  } catch (e) {
    showError(String(e), 0);
  }
}

function shapeOf(a) {
  return Array.isArray(a) ? [a.length, ...shapeOf(a[0])] : [];
}

// One panel per value of `field`, the same seed throughout; each panel says its NFE and time, or its error.
async function strip(containerId, field, values) {
  clearError();
  if ($("seed").value.trim() === "") $("seed").value = String(Math.floor(Math.random() * 2 ** 31));
  const container = $(containerId);
  container.replaceChildren();
  const panels = values.map((value) => {
    const panel = document.createElement("div");
    panel.className = "panel";
    const canvas = document.createElement("canvas");
    canvas.width = 160;
    canvas.height = 160;
    const caption = document.createElement("span");
    caption.className = "caption";
    caption.textContent = `${field === "steps" ? "K" : "w"} = ${value}`;
    panel.append(canvas, caption);
    container.append(panel);
    return { value, canvas, caption };
  });
  await Promise.all(
    panels.map(async ({ value, canvas, caption }) => {
      const t0 = performance.now();
      try {
        const out = await postSamples(requestBody({ [field]: value }));
        draw(canvas, out.samples, out.shape);
        caption.textContent += ` · NFE ${out.nfe} · ${(performance.now() - t0).toFixed(0)} ms`;
      } catch (e) {
        const err = e.body && e.body.error ? e.body.error : { message: String(e.body) };
        caption.textContent += ` · ${err.field ? `(${err.field}) ` : ""}${err.message}`;
        caption.classList.add("error");
      }
    }),
  );
  container.dataset.done = String(panels.length);
}

async function wstrip() {
  if ($("class_label").value === "") {
    const info = models[$("model").value];
    if (!info || info.num_classes === 0) {
      showError({ error: { status: "", field: "class_label", message: "guidance needs a class-conditional model" } });
      return;
    }
    $("class_label").value = "0";
  }
  await strip("wstrip-panels", "guidance", W_STRIP);
}

// ---- models --------------------------------------------------------------------------------------------

function fillModel() {
  const info = models[$("model").value];
  if (!info) return;
  const keep = $("sampler").value;
  $("sampler").replaceChildren(...info.samplers.map((s) => new Option(s, s)));
  if (info.samplers.includes(keep)) $("sampler").value = keep;
  $("class_label").replaceChildren(new Option("none", ""), ...info.classes.map((c) => new Option(String(c), c)));
  $("num_samples").value = String(info.data_shape.length === 1 ? 256 : 16);
}

async function loadModels() {
  try {
    const list = (await getJson("/v1/models")).models;
    models = Object.fromEntries(list.map((m) => [m.id, m]));
    $("model").replaceChildren(...list.map((m) => new Option(`${m.id} (${m.kind}, ${m.data_kind})`, m.id)));
    fillModel();
    clearError();
    document.body.dataset.ready = "1";
  } catch (e) {
    showError(e.body, e.status);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("controls").addEventListener("submit", run);
  $("stream").addEventListener("click", stream);
  $("kstrip").addEventListener("click", () => strip("kstrip-panels", "steps", K_STRIP));
  $("wstrip").addEventListener("click", wstrip);
  $("model").addEventListener("change", fillModel);
  $("api_key").addEventListener("change", loadModels);
  loadModels();
});
