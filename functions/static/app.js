// tagsmith's web page: plain JavaScript over the HTTP API, no build step.
"use strict";

const PAGE = 60;
const UPLOAD_CHUNK = 8;
const state = { tag: "", positives: new Set(), negatives: new Set(), images: [], total: 0, hasModel: false };
const $ = (selector) => document.querySelector(selector);
const enc = encodeURIComponent;

// When the server needs an API key (TAGSMITH_API_KEYS), the page asks for one on the first 401,
// keeps it in this browser's localStorage and sends it as X-API-Key.
function keyHeaders() {
  const key = localStorage.getItem("tagsmith.apiKey");
  return key ? { "X-API-Key": key } : {};
}

async function authorisedFetch(path, options = {}) {
  let response = await fetch(path, { ...options, headers: keyHeaders() });
  if (response.status === 401) {
    const key = window.prompt("This tagsmith server needs an API key:");
    if (key) {
      localStorage.setItem("tagsmith.apiKey", key.trim());
      response = await fetch(path, { ...options, headers: keyHeaders() });
    }
  }
  return response;
}

async function api(method, path, body) {
  const response = await authorisedFetch(path, { method, body });
  const type = response.headers.get("content-type") || "";
  const data = type.includes("application/json") ? await response.json() : null;
  if (!response.ok) {
    const error = new Error(data && data.message ? data.message : `HTTP ${response.status}`);
    error.status = response.status;
    throw error;
  }
  return data;
}

function el(name, attrs = {}, ...children) {
  const node = document.createElement(name);
  for (const [key, value] of Object.entries(attrs)) {
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "style") node.style.cssText = value;  // CSSOM: allowed by the page's CSP
    else node.setAttribute(key, value);
  }
  node.append(...children);
  return node;
}

function say(text, ok = false) {
  const box = $("#message");
  box.textContent = text;
  box.className = ok ? "ok" : "";
  box.hidden = !text;
}

function guard(action) {
  return (...args) => action(...args).catch((error) => say(error.message));
}

// --- tags -----------------------------------------------------------------------------------

async function loadTags() {
  const { tags } = await api("GET", "/custom/tags");
  $("#tag-list").replaceChildren(...tags.map((t) => el("option", { value: t.tag })));
}

async function selectTag(tag) {
  state.tag = tag.trim();
  localStorage.setItem("tagsmith.tag", state.tag);
  state.positives = new Set();
  state.negatives = new Set();
  state.hasModel = false;
  if (state.tag) {
    try {
      const info = await api("GET", `/custom/tags/${enc(state.tag)}`);
      state.positives = new Set(info.positives);
      state.negatives = new Set(info.negatives);
      state.hasModel = info.model !== null;
    } catch (error) {
      if (error.status !== 404) say(error.message);
    }
  }
  renderCounts();
  refreshCards();
  await Promise.all([loadVersions(), loadSuggestions()]);
}

function renderCounts() {
  const ready = state.tag && state.positives.size > 0 && state.negatives.size > 0;
  $("#counts").textContent = state.tag
    ? `${state.positives.size} positive · ${state.negatives.size} negative`
    : "Type a tag to teach";
  $("#train").disabled = !ready;
}

// --- images ---------------------------------------------------------------------------------

function thumbnail(imageId) {
  const path = `/custom/images/${enc(imageId)}/thumbnail?size=300`;
  if (!localStorage.getItem("tagsmith.apiKey")) return el("img", { src: path, alt: imageId, loading: "lazy" });
  const img = el("img", { alt: imageId });  // an <img src> cannot send the key: fetch it instead
  authorisedFetch(path).then((r) => (r.ok ? r.blob() : null)).then((blob) => {
    if (blob) img.src = URL.createObjectURL(blob);
  });
  return img;
}

function card(imageId, caption) {
  return el("div", { class: "card", "data-image-id": imageId },
    thumbnail(imageId),
    el("div", { class: "caption", title: imageId }, caption),
    el("div", { class: "buttons" },
      el("button", { type: "button", class: "pos", title: "positive example", onclick: guard(() => mark(imageId, "positive")) }, "+ positive"),
      el("button", { type: "button", class: "neg", title: "negative example", onclick: guard(() => mark(imageId, "negative")) }, "− negative")));
}

function refreshCards() {
  for (const node of document.querySelectorAll(".card[data-image-id]")) {
    const id = node.dataset.imageId;
    node.classList.toggle("positive", state.positives.has(id));
    node.classList.toggle("negative", state.negatives.has(id));
  }
}

async function loadImages(append = false) {
  const offset = append ? state.images.length : 0;
  const page = await api("GET", `/custom/images?limit=${PAGE}&offset=${offset}`);
  state.images = append ? state.images.concat(page.images) : page.images;
  state.total = page.total;
  $("#gallery").replaceChildren(...state.images.map((image) => card(image.image_id, image.image_id)));
  $("#more").hidden = state.images.length >= state.total;
  refreshCards();
}

async function mark(imageId, type) {
  if (!state.tag) {
    say("Type a tag first.");
    $("#tag").focus();
    return;
  }
  const current = state.positives.has(imageId) ? "positive" : state.negatives.has(imageId) ? "negative" : null;
  const path = current === type
    ? `/custom/unassign/${enc(imageId)}/${enc(state.tag)}`
    : `/custom/assign/${enc(imageId)}/${type}/${enc(state.tag)}`;
  await api("POST", path);
  state.positives.delete(imageId);
  state.negatives.delete(imageId);
  if (current !== type) (type === "positive" ? state.positives : state.negatives).add(imageId);
  renderCounts();
  refreshCards();
  if (current === null) loadTags().catch(() => {});
}

async function upload(fileList) {
  const files = [...fileList];
  if (!files.length) return;
  let added = 0;
  const failures = [];
  for (let start = 0; start < files.length; start += UPLOAD_CHUNK) {
    $("#upload-status").textContent = `Uploading ${start + 1}–${Math.min(start + UPLOAD_CHUNK, files.length)} of ${files.length}…`;
    const form = new FormData();
    for (const file of files.slice(start, start + UPLOAD_CHUNK)) form.append("data", file, file.name);
    const result = await api("POST", "/custom/add_many", form);
    added += result.added;
    for (const item of result.images) if (item.error) failures.push(`${item.filename}: ${item.message}`);
  }
  $("#upload-status").textContent = `Added ${added} image${added === 1 ? "" : "s"}.`;
  say(failures.join(" "));
  await loadImages();
}

function dropZone(zone, onFiles) {
  for (const name of ["dragenter", "dragover"]) {
    zone.addEventListener(name, (event) => { event.preventDefault(); zone.classList.add("over"); });
  }
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    guard(onFiles)(event.dataTransfer.files);
  });
}

// --- training -------------------------------------------------------------------------------

async function train() {
  const task = await api("POST", `/custom/train/${enc(state.tag)}`);
  $("#train").disabled = true;
  $("#training").hidden = false;
  say("");
  await follow(task.task_id, state.tag);
}

async function follow(taskId, tag) {
  for (;;) {
    const status = await api("GET", `/status/${enc(taskId)}`);
    const percent = Math.round(100 * status.progress);
    $("#progress-fill").style.width = `${percent}%`;
    $("#progress-text").textContent = `${status.stage} ${percent}%`;
    if (status.status === "finished") {
      $("#progress-text").textContent = `Trained version ${status.result.version}`;
      const { version, published } = status.result;
      say(published === false
        ? `Trained '${tag}': version ${version} is kept, but a newer version, trained meanwhile, stays in use.`
        : `Trained '${tag}': version ${version} is now in use.`, true);
      break;
    }
    if (status.status === "failed") {
      say(status.error || "The training failed.");
      break;
    }
    await new Promise((resolve) => setTimeout(resolve, 500));
  }
  renderCounts();
  if (tag === state.tag) await selectTag(tag);
  await loadTags();
}

// --- versions and suggestions ---------------------------------------------------------------

const fixed = (value) => (typeof value === "number" ? value.toFixed(2) : "–");

// A version loaded with /set_state says where it came from (metrics.origin).
function originNote(origin) {
  if (!origin) return [];
  const number = origin.version ? ` (v${origin.version} there)` : "";
  return [el("div", { class: "muted origin" }, `loaded from a ${origin.loaded_from || "state archive"}${number}`)];
}

async function loadVersions() {
  const box = $("#versions");
  if (!state.tag) {
    box.replaceChildren(el("p", { class: "muted" }, "Choose a tag to see its trained versions."));
    return;
  }
  let answer = { versions: [] };
  try {
    answer = await api("GET", `/custom/versions/${enc(state.tag)}`);
  } catch (error) {
    if (error.status !== 404) throw error;
  }
  if (!answer.versions.length) {
    box.replaceChildren(el("p", { class: "muted" }, `'${state.tag}' has no trained version yet.`));
    return;
  }
  const head = el("tr", {}, ...["Version", "Trained", "Examples", "ROC AUC", "F1", "Precision", "Recall", "Threshold", ""]
    .map((title) => el("th", {}, title)));
  const rows = answer.versions.slice().reverse().map((v) => {
    const m = v.metrics;
    const action = v.current
      ? el("span", { class: "badge" }, "in use")
      : el("button", { type: "button", class: "rollback", onclick: guard(() => rollback(v.version)) }, "Use this one");
    return el("tr", { class: v.current ? "current" : "", "data-version": v.version },
      el("td", {}, `v${v.version}`),
      el("td", {}, v.trained_at ? new Date(v.trained_at).toLocaleString() : "–", ...originNote(m.origin)),
      el("td", {}, `${m.positives ?? "?"} + / ${m.negatives ?? "?"} −`),
      el("td", {}, fixed(m.roc_auc)), el("td", {}, fixed(m.f1)),
      el("td", {}, fixed(m.precision)), el("td", {}, fixed(m.recall)),
      el("td", {}, v.threshold.toFixed(3)), el("td", {}, action));
  });
  const current = answer.versions.find((v) => v.current) || answer.versions[answer.versions.length - 1];
  const wrong = (current.metrics.most_wrong || []).map((w) =>
    card(w.image_id, `${w.type}, scored ${w.score.toFixed(2)}`));
  const review = wrong.length
    ? [el("h3", {}, `Most wrong in cross-validation (v${current.version})`), el("div", { class: "grid most-wrong" }, ...wrong)]
    : [];
  const onnx = answer.current === null ? [] : [el("p", {}, el("a", {
    id: "export-onnx", href: `/export/onnx?tag=${enc(state.tag)}`, download: "tagsmith-edge.onnx",
    onclick: (event) => downloadWithKey(event).catch((error) => say(error.message)),
  }, `Download '${state.tag}' (v${answer.current}) as ONNX`), el("span", { class: "muted" },
    " — the backbone and this tag's model in one file, for devices"))];
  box.replaceChildren(el("table", {}, head, ...rows), ...onnx, ...review);
}

// A plain link downloads when the server needs no API key; with one, the file is fetched with
// the key and saved from memory.
async function downloadWithKey(event) {
  if (!localStorage.getItem("tagsmith.apiKey")) return;
  event.preventDefault();
  const link = event.currentTarget;
  const response = await authorisedFetch(link.getAttribute("href"));
  if (!response.ok) {
    say(`Download failed: HTTP ${response.status}`);
    return;
  }
  const url = URL.createObjectURL(await response.blob());
  const save = el("a", { href: url, download: link.getAttribute("download") });
  save.click();
  setTimeout(() => URL.revokeObjectURL(url), 60000);
}

async function rollback(version) {
  await api("POST", `/custom/rollback/${enc(state.tag)}/${version}`);
  say(`'${state.tag}' uses version ${version} again.`, true);
  await Promise.all([loadVersions(), loadSuggestions()]);
}

async function loadSuggestions() {
  const panel = $("#suggest-panel");
  if (!state.tag || !state.hasModel) {
    panel.hidden = true;
    return;
  }
  const answer = await api("GET", `/custom/suggest/${enc(state.tag)}?limit=6`);
  const cards = (items) => items.map((s) => card(s.image_id, `score ${s.score.toFixed(2)}`));
  $("#uncertain").replaceChildren(...cards(answer.uncertain));
  $("#likely").replaceChildren(...cards(answer.likely_positive));
  panel.hidden = answer.candidates === 0;
  refreshCards();
}

// --- trying a prediction --------------------------------------------------------------------

function scoreList(items) {
  if (!items.length) return el("p", { class: "muted" }, "none");
  return el("ul", {}, ...items.map(([name, score, match]) => el("li", { class: match ? "match" : "nomatch" },
    el("span", { class: "bar", style: `width:${Math.round(score * 80)}px` }), `${name} ${score.toFixed(2)}`)));
}

async function predict(fileList) {
  const file = fileList[0];
  if (!file) return;
  const form = new FormData();
  form.append("data", file, file.name);
  const box = $("#prediction");
  box.replaceChildren(el("p", { class: "muted" }, "Predicting…"));
  const result = await api("POST", "/predict", form);
  const custom = Object.entries(result.custom).map(([tag, s]) => [`${tag}${s.match ? " ✓" : ""}`, s.score, s.match]);
  box.replaceChildren(
    el("img", { src: URL.createObjectURL(file), alt: file.name }),
    el("div", { id: "prediction-result" },
      el("h3", {}, "Custom tags"), scoreList(custom),
      el("h3", {}, "Keywords"), scoreList(result.keywords.map((k) => [k.name, k.score, true])),
      el("h3", {}, "Styles"), scoreList(result.styles.map((s) => [s.name, s.score, true]))));
}

// --- wiring ---------------------------------------------------------------------------------

function debounce(action, ms) {
  let timer;
  return (...args) => { clearTimeout(timer); timer = setTimeout(() => action(...args), ms); };
}

document.addEventListener("DOMContentLoaded", () => {
  for (const name of ["dragover", "drop"]) document.addEventListener(name, (event) => event.preventDefault());
  dropZone($("#drop"), upload);
  dropZone($("#predict-drop"), predict);
  $("#files").addEventListener("change", (event) => guard(upload)(event.target.files).finally(() => { event.target.value = ""; }));
  $("#predict-file").addEventListener("change", (event) => guard(predict)(event.target.files));
  $("#tag").addEventListener("input", debounce((event) => guard(selectTag)(event.target.value), 350));
  $("#train").addEventListener("click", guard(train));
  $("#more").addEventListener("click", guard(() => loadImages(true)));
  $("#tag").value = localStorage.getItem("tagsmith.tag") || "";
  guard(async () => {
    await Promise.all([loadImages(), loadTags()]);
    await selectTag($("#tag").value);
  })();
});
