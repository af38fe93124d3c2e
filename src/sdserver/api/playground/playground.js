// The sdserver playground: forms that call the real API endpoints, poll fetch, and show the same request as code.
// The key lives in sessionStorage (this tab only) and travels in the `key` header, never in a URL or a cookie.
"use strict";

const KEY_STORAGE = "sdserver.playground.key";
const POLL_MS = 700;
const ENDPOINTS = {
  text2img: "/api/v6/images/text2img",
  img2img: "/api/v6/images/img2img",
  inpaint: "/api/v6/images/inpaint",
  upscale: "/api/v6/image_editing/super_resolution",
};
const FETCH_PREFIX = { text2img: "/api/v6/images", img2img: "/api/v6/images", inpaint: "/api/v6/images",
  upscale: "/api/v6/image_editing" };
const MODELS_PATH = "/api/v1/enterprise/get_all_models";
const SCHEDULERS_PATH = "/api/v1/enterprise/schedulers_list";
// Stands for an image file in the code snippets, which read the file instead of embedding kilobytes of base64.
const FILE_MARK = /"@@FILE:([a-z.]+)@@"/g;

const $ = (id) => document.getElementById(id);
const state = { mode: "text2img", config: null, picture: null, pictureDataUrl: null, running: false };

function apiKey() {
  return $("api-key").value.trim();
}

async function callApi(path, body) {
  const response = await fetch(path, {
    method: "POST",
    headers: { "Content-Type": "application/json", key: apiKey() },
    body: JSON.stringify(body || {}),
    cache: "no-store",
  });
  let reply;
  try {
    reply = await response.json();
  } catch {
    throw new Error(`HTTP ${response.status} from ${path} (not JSON)`);
  }
  if (reply.status === "error" || reply.status === "failed") {
    throw new Error(describeError(reply));
  }
  if (!response.ok) {
    throw new Error(reply.message || reply.error || `HTTP ${response.status} from ${path}`);
  }
  return reply;
}

function describeError(reply) {
  let text = reply.message || reply.messege || `status ${reply.status}`;
  if (reply.errors && typeof reply.errors === "object") {
    const details = Object.entries(reply.errors).map(([field, messages]) => `${field}: ${[].concat(messages).join("; ")}`);
    if (details.length) text += ` (${details.join(" · ")})`;
  }
  return text;
}

function showError(message) {
  const box = $("error");
  box.textContent = message || "";
  box.hidden = !message;
}

function fillSelect(select, values, selected) {
  select.replaceChildren(...values.map(([value, label, disabled]) => {
    const option = new Option(label, value, false, value === selected);
    option.disabled = Boolean(disabled);
    return option;
  }));
}

// --- connecting: models and schedulers come from the API with the key ---

async function connect() {
  const key = apiKey();
  if (!key) {
    showError("Type an API key first.");
    return;
  }
  sessionStorage.setItem(KEY_STORAGE, key);
  showError("");
  $("key-state").textContent = "Connecting…";
  try {
    const [models, schedulers] = await Promise.all([callApi(MODELS_PATH), callApi(SCHEDULERS_PATH)]);
    const ready = showModels(models.models || []);
    const names = schedulers.schedulers || [];
    fillSelect($("scheduler"), names.map((name) => [name, name]), state.config.default_scheduler);
    $("key-state").textContent = `Connected: ${ready} model(s) ready, ${names.length} schedulers.`;
  } catch (error) {
    $("key-state").textContent = "Not connected.";
    showError(error.message);
  }
  updateSnippets();
}

function showModels(models) {
  const checkpoints = models.filter((m) => m.model_type === "checkpoint");
  const options = checkpoints.map((m) => [m.model_id, m.state === "ready" ? m.model_id : `${m.model_id} (${m.state})`,
    m.state !== "ready"]);
  const ready = checkpoints.find((m) => m.state === "ready");
  fillSelect($("model_id"), options.length ? options : [["", "(no models on this server)", true]],
    state.config.default_model_id || (ready && ready.model_id));
  const upscalers = new Set(state.config.upscalers);
  models.filter((m) => m.model_type === "upscaler" && m.state === "ready").forEach((m) => upscalers.add(m.model_id));
  fillSelect($("upscaler"), [...upscalers].map((id) => [id, id]), state.config.default_upscaler);
  return checkpoints.filter((m) => m.state === "ready").length;
}

// --- the form: one per mode, sharing fields ---

function setMode(mode) {
  state.mode = mode;
  document.querySelectorAll("[data-mode]").forEach((tab) => tab.setAttribute("aria-selected", tab.dataset.mode === mode));
  document.querySelectorAll("[data-modes]").forEach((el) => { el.hidden = !el.dataset.modes.split(" ").includes(mode); });
  $("submit").textContent = mode === "upscale" ? "Upscale" : "Generate";
  updateSnippets();
}

function number(id) {
  const value = $(id).value.trim();
  return value === "" ? null : Number(value);
}

// The body the form sends; `forCode` swaps image data for file marks the snippets turn into file reads.
function requestBody(forCode) {
  const mode = state.mode;
  if (mode === "upscale") {
    return {
      init_image: forCode ? "@@FILE:input.png@@" : state.pictureDataUrl,
      model_id: $("upscaler").value,
      scale: Number($("scale").value),
      face_enhance: $("face_enhance").checked ? "yes" : "no",
      instant_response: "yes",
    };
  }
  const body = {
    model_id: $("model_id").value,
    prompt: $("prompt").value,
    negative_prompt: $("negative_prompt").value || null,
    width: number("width"),
    height: number("height"),
    num_inference_steps: number("num_inference_steps"),
    guidance_scale: number("guidance_scale"),
    scheduler: $("scheduler").value || null,
    seed: number("seed"),
    samples: number("samples"),
    instant_response: "yes",
  };
  if (mode !== "text2img") {
    body.init_image = forCode ? "@@FILE:init.png@@" : $("init-canvas").toDataURL("image/png");
    body.strength = number("strength");
  }
  if (mode === "inpaint") body.mask_image = forCode ? "@@FILE:mask.png@@" : maskDataUrl();
  return Object.fromEntries(Object.entries(body).filter(([, value]) => value !== null && value !== ""));
}

function checkForm() {
  if (!apiKey()) return "Type an API key and connect first.";
  if (state.mode === "upscale") return state.pictureDataUrl ? null : "Choose an image to upscale.";
  if (!$("model_id").value) return "Choose a model (connect with your key to list them).";
  if (!$("prompt").value.trim()) return "Write a prompt.";
  if (state.mode !== "text2img" && !state.picture) return "Choose an init image.";
  return null;
}

// --- pictures: the init image is fitted to the chosen size; the mask is painted over it ---

function loadPicture(file) {
  const reader = new FileReader();
  reader.onload = () => {
    state.pictureDataUrl = reader.result;
    const picture = new Image();
    picture.onload = () => {
      state.picture = picture;
      drawPicture();
    };
    picture.src = reader.result;
  };
  reader.readAsDataURL(file);
}

function drawPicture() {
  const width = number("width") || 512;
  const height = number("height") || 512;
  const init = $("init-canvas");
  const mask = $("mask-canvas");
  for (const canvas of [init, mask]) {
    canvas.width = width;
    canvas.height = height;
  }
  $("stack").style.aspectRatio = `${width} / ${height}`;
  $("canvas-empty").hidden = Boolean(state.picture);
  if (!state.picture) return;
  // Cover: scale to fill, centre-crop the rest (what a resize to the job's size would otherwise distort).
  const picture = state.picture;
  const scale = Math.max(width / picture.naturalWidth, height / picture.naturalHeight);
  const drawWidth = picture.naturalWidth * scale;
  const drawHeight = picture.naturalHeight * scale;
  init.getContext("2d").drawImage(picture, (width - drawWidth) / 2, (height - drawHeight) / 2, drawWidth, drawHeight);
}

function maskDataUrl() {
  const mask = $("mask-canvas");
  const out = document.createElement("canvas");
  out.width = mask.width;
  out.height = mask.height;
  const context = out.getContext("2d");
  context.fillStyle = "#000";
  context.fillRect(0, 0, out.width, out.height);
  context.drawImage(mask, 0, 0);
  return out.toDataURL("image/png");
}

function setUpMaskBrush() {
  const mask = $("mask-canvas");
  let last = null;
  const point = (event) => {
    const rect = mask.getBoundingClientRect();
    return [(event.clientX - rect.left) * mask.width / rect.width, (event.clientY - rect.top) * mask.height / rect.height];
  };
  const paint = (event) => {
    const context = mask.getContext("2d");
    const [x, y] = point(event);
    context.strokeStyle = "#fff";
    context.fillStyle = "#fff";
    context.lineCap = "round";
    context.lineJoin = "round";
    // The slider is in screen pixels; the canvas may be shown larger or smaller than it is.
    context.lineWidth = Number($("brush").value) * mask.width / mask.getBoundingClientRect().width;
    context.beginPath();
    if (last) {
      context.moveTo(...last);
      context.lineTo(x, y);
      context.stroke();
    } else {
      context.arc(x, y, context.lineWidth / 2, 0, 2 * Math.PI);
      context.fill();
    }
    last = [x, y];
  };
  mask.addEventListener("pointerdown", (event) => {
    mask.setPointerCapture(event.pointerId);
    last = null;
    paint(event);
  });
  mask.addEventListener("pointermove", (event) => { if (last) paint(event); });
  const stop = () => { last = null; };
  mask.addEventListener("pointerup", stop);
  mask.addEventListener("pointercancel", stop);
  $("clear-mask").addEventListener("click", () => mask.getContext("2d").clearRect(0, 0, mask.width, mask.height));
}

// --- running a job: submit with instant_response, poll fetch, show the pictures ---

async function submitJob(event) {
  event.preventDefault();
  const problem = checkForm();
  if (problem) {
    showError(problem);
    return;
  }
  if (state.running) return;
  state.running = true;
  $("submit").disabled = true;
  showError("");
  $("results").replaceChildren();
  const mode = state.mode;
  try {
    let reply = await callApi(ENDPOINTS[mode], requestBody(false));
    $("busy").textContent = `Job ${reply.id} submitted.`;
    while (reply.status === "processing") {
      showProgress(reply);
      await new Promise((resolve) => setTimeout(resolve, POLL_MS));
      reply = await callApi(`${FETCH_PREFIX[mode]}/fetch/${reply.id}`);
    }
    showProgress(null);
    showPictures(reply);
    $("busy").textContent = `Job ${reply.id} done in ${reply.generationTime ?? "?"} s.`;
  } catch (error) {
    showProgress(null);
    showError(error.message);
    $("busy").textContent = "";
  } finally {
    state.running = false;
    $("submit").disabled = false;
  }
}

function showProgress(reply) {
  $("progress-block").hidden = !reply;
  if (!reply) return;
  const percent = Math.round(Number(reply.progress) || 0);
  $("progress").value = percent;
  const parts = [reply.job_status || "queued", `${percent}%`];
  if (reply.queue_position) parts.push(`queue position ${reply.queue_position}`);
  if (reply.eta !== undefined) parts.push(`ETA ${reply.eta} s`);
  $("progress-text").textContent = parts.join(" · ");
}

function showPictures(reply) {
  const urls = [].concat(reply.output || []);
  $("results").replaceChildren(...urls.map((url, index) => {
    const figure = document.createElement("figure");
    const link = document.createElement("a");
    link.href = url;
    link.target = "_blank";
    link.rel = "noopener noreferrer";
    const picture = document.createElement("img");
    picture.src = url;
    picture.alt = `output ${index + 1} of job ${reply.id}`;
    picture.className = "output";
    link.append(picture);
    const caption = document.createElement("figcaption");
    const seed = reply.meta && reply.meta.seed !== undefined ? ` · seed ${reply.meta.seed}` : "";
    caption.textContent = `job ${reply.id}${seed}`;
    figure.append(link, caption);
    return figure;
  }));
  if (reply.nsfw_content_detected) {
    $("results").append(Object.assign(document.createElement("p"), { className: "muted",
      textContent: "The safety checker flagged this output." }));
  }
}

// --- the same request as curl and Python ---

function updateSnippets() {
  const mode = state.mode;
  const url = location.origin + ENDPOINTS[mode];
  const fetchUrl = `${location.origin}${FETCH_PREFIX[mode]}/fetch/`;
  const json = JSON.stringify(requestBody(true), null, 2);
  $("snippet-curl").textContent = curlSnippet(url, json, fetchUrl);
  $("snippet-python").textContent = pythonSnippet(url, json, fetchUrl);
}

function curlSnippet(url, json, fetchUrl) {
  const head = `curl -sS -X POST '${url}' \\\n  -H 'Content-Type: application/json' -H "key: $KEY"`;
  const quoted = json.replaceAll("'", "'\\''");
  const poll = `\n\n# While "status" is "processing", poll with the reply's "id" in ID:\n` +
    `curl -sS -X POST '${fetchUrl}'"$ID" -H "key: $KEY"`;
  if (!json.includes("@@FILE:")) return `${head} \\\n  -d '${quoted}'${poll}`;
  // Images go in as raw base64 of the files; curl --data @- drops the line breaks between the pieces.
  const pieces = quoted.split(FILE_MARK);
  const last = pieces.length - 1;
  const lines = pieces.map((piece, index) => index % 2
    ? `  base64 -w0 ${piece}`
    : `  echo '${index > 0 ? '"' : ""}${piece}${index < last ? '"' : ""}'`);
  return `${fileNote()}{\n${lines.join("\n")}\n} | ${head} --data @-${poll}`;
}

function pythonSnippet(url, json, fetchUrl) {
  const usesFiles = json.includes("@@FILE:");
  const body = json.replace(FILE_MARK, (_, name) => `b64("${name}")`);
  const reader = usesFiles
    ? `\n\ndef b64(path):\n    with open(path, "rb") as f:\n        return base64.b64encode(f.read()).decode()\n`
    : "";
  return `${usesFiles ? fileNote() : ""}import ${usesFiles ? "base64\nimport " : ""}os\nimport time\n\nimport requests\n\n` +
    `HEADERS = {"key": os.environ["KEY"]}${reader}\n\nbody = ${body}\n` +
    `reply = requests.post("${url}", json=body, headers=HEADERS, timeout=120).json()\n` +
    `while reply["status"] == "processing":\n    time.sleep(1)\n` +
    `    reply = requests.post(f"${fetchUrl}{reply['id']}", headers=HEADERS, timeout=30).json()\n` +
    `print(reply["status"], reply.get("output") or reply.get("message"))\n`;
}

// Which files the snippet reads: the page itself sends them as data URLs, fitted to the chosen size.
function fileNote() {
  if (state.mode === "upscale") return `# input.png: the picture to upscale\n`;
  const names = state.mode === "inpaint" ? "init.png and mask.png (white = repaint)" : "init.png";
  return `# ${names}: your pictures, ${number("width") || 512}×${number("height") || 512} like the page sends\n`;
}

function showSnippet(kind) {
  document.querySelectorAll("[data-snippet]").forEach((tab) => tab.setAttribute("aria-selected", tab.dataset.snippet === kind));
  $("snippet-curl").hidden = kind !== "curl";
  $("snippet-python").hidden = kind !== "python";
}

// --- start-up ---

async function start() {
  const reply = await fetch("/playground/config.json", { cache: "no-store" });
  state.config = await reply.json();
  const config = state.config;
  const sizes = config.sizes.map((size) => [String(size), `${size}px`]);
  fillSelect($("width"), sizes, "512");
  fillSelect($("height"), sizes, "512");
  $("num_inference_steps").max = config.max_steps;
  $("num_inference_steps").value = config.default_steps;
  $("guidance_scale").value = config.default_guidance_scale;
  $("strength").value = config.default_strength;
  $("samples").max = config.max_samples;
  fillSelect($("scheduler"), [[config.default_scheduler, config.default_scheduler]], config.default_scheduler);
  fillSelect($("upscaler"), config.upscalers.map((id) => [id, id]), config.default_upscaler);

  document.querySelectorAll("[data-mode]").forEach((tab) => tab.addEventListener("click", () => setMode(tab.dataset.mode)));
  document.querySelectorAll("[data-snippet]").forEach((tab) =>
    tab.addEventListener("click", () => showSnippet(tab.dataset.snippet)));
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    connect();
  });
  $("forget").addEventListener("click", () => {
    sessionStorage.removeItem(KEY_STORAGE);
    $("api-key").value = "";
    $("key-state").textContent = "Key removed from this tab.";
  });
  $("job-form").addEventListener("submit", submitJob);
  $("job-form").addEventListener("input", updateSnippets);
  $("job-form").addEventListener("change", updateSnippets);
  $("init_file").addEventListener("change", (event) => { if (event.target.files[0]) loadPicture(event.target.files[0]); });
  for (const id of ["width", "height"]) $(id).addEventListener("change", drawPicture);
  setUpMaskBrush();
  drawPicture();
  setMode("text2img");

  const saved = sessionStorage.getItem(KEY_STORAGE);
  if (saved) {
    $("api-key").value = saved;
    connect();
  }
}

document.addEventListener("DOMContentLoaded", () => start().catch((error) => showError(error.message)));
