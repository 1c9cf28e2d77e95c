// tagsmith's web page: plain JavaScript over the HTTP API, no build step.
// Every piece of data (file names, tags, messages) reaches the page through textContent or
// attributes set one by one: nothing from the server or the user is parsed as HTML.
"use strict";

const PAGE = Number(localStorage.getItem("tagsmith.pageSize")) || 100;  // images per request
const KEPT_PAGES = 5;        // at most this many pages of cards in the DOM; earlier ones are dropped
const UPLOADS_AT_ONCE = 3;   // one file per request, a few requests at a time
const LABELS_AT_ONCE = 6;
const $ = (selector) => document.querySelector(selector);
const enc = encodeURIComponent;

const state = {
  tag: "",
  known: false,              // the server knows the tag (it has examples or a model)
  hasModel: false,
  positives: 0, negatives: 0,
  pages: [],                 // [{cursor, next, images}] of the cards shown, in order
  firstPage: 0,              // index in `cursors` of pages[0]
  cursors: [null],           // cursor of every page loaded so far, to go back after dropping some
  total: 0,
  loading: false,
  generation: 0,             // bumps when the query changes: stale answers are dropped
  params: new URLSearchParams(),  // the query of this generation, read from the filters once
  typing: false,             // a search is being typed: no page of the old query loads meanwhile
  labels: new Map(),         // image id -> "positive" | "negative" | null, as last known
  selected: new Set(),
  anchor: null,              // the last image clicked or toggled, for shift ranges
  undo: null,                // {tag, changes: [[id, before]]}
  versions: null,
  previousVersion: null,     // shown beside the new one after a training
  following: null,           // {taskId, tag}: the training whose progress is shown
  messageFrom: "",           // what the message shown is about ("library": the grid's last load)
};

const TRAINING_KEY = "tagsmith.training";  // {tag, taskId, before}: followed again after a reload

// --- the API ---------------------------------------------------------------------------------

// When the server needs an API key (TAGSMITH_API_KEYS), the page asks for one on the first 401,
// keeps it in this browser's localStorage and sends it as X-API-Key.
function apiKey() { return localStorage.getItem("tagsmith.apiKey"); }
function keyHeaders() { const key = apiKey(); return key ? { "X-API-Key": key } : {}; }

function askForKey() {
  const key = window.prompt("This tagsmith server needs an API key:");
  if (key) localStorage.setItem("tagsmith.apiKey", key.trim());
  $("#key-button").hidden = false;  // to enter another later (a mistyped or revoked key)
  return Boolean(key);
}

function refusedKeyMessage() {
  return apiKey() ? "The server did not accept this page's API key: choose \u201cAPI key\u201d at the top to enter another."
    : "This server needs an API key: choose \u201cAPI key\u201d at the top to enter it.";
}

async function authorisedFetch(path, options = {}) {
  let response = await fetch(path, { ...options, headers: keyHeaders() });
  if (response.status === 401 && askForKey()) response = await fetch(path, { ...options, headers: keyHeaders() });
  return response;
}

class ApiError extends Error {
  constructor(message, status, code) { super(message); this.status = status; this.code = code; }
}

async function api(method, path, body) {
  const response = await authorisedFetch(path, { method, body });
  const type = response.headers.get("content-type") || "";
  const data = type.includes("application/json") ? await response.json() : null;
  if (response.status === 401) throw new ApiError(refusedKeyMessage(), 401, data && data.error);
  if (!response.ok) throw new ApiError(data && data.message ? data.message : `HTTP ${response.status}`, response.status, data && data.error);
  return data;
}

// One upload with its byte progress (fetch has none): XMLHttpRequest, with the key.
function uploadWithProgress(path, form, onProgress, retried = false) {
  return new Promise((resolve, reject) => {
    const request = new XMLHttpRequest();
    request.open("POST", path);
    for (const [name, value] of Object.entries(keyHeaders())) request.setRequestHeader(name, value);
    request.responseType = "json";
    request.upload.onprogress = (event) => { if (event.lengthComputable) onProgress(event.loaded / event.total); };
    request.onerror = () => reject(new ApiError("The server could not be reached.", 0));
    request.onload = () => {
      if (request.status === 401 && !retried && askForKey()) {
        uploadWithProgress(path, form, onProgress, true).then(resolve, reject);
        return;
      }
      const data = request.response;
      if (request.status === 401) reject(new ApiError(refusedKeyMessage(), 401));
      else if (request.status >= 400) reject(new ApiError(data && data.message ? data.message : `HTTP ${request.status}`, request.status));
      else resolve(data);
    };
    request.send(form);
  });
}

// Runs `work` on every item, `limit` at a time; returns the results in order.
async function inParallel(items, limit, work) {
  const results = new Array(items.length);
  let next = 0;
  const runners = Array.from({ length: Math.min(limit, items.length) }, async () => {
    while (next < items.length) {
      const i = next++;
      results[i] = await work(items[i], i);
    }
  });
  await Promise.all(runners);
  return results;
}

// --- small helpers ---------------------------------------------------------------------------

function el(name, attrs = {}, ...children) {
  const node = document.createElement(name);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "style") node.style.cssText = value;  // CSSOM: allowed by the page's CSP
    else node.setAttribute(key, value === true ? "" : value);
  }
  node.append(...children.filter((c) => c !== null && c !== undefined));
  return node;
}

// One message at a time, at the bottom of the window: a success fades after a few seconds, an
// error stays until dismissed or replaced. `from` names what it is about, so that the next success
// of the same kind (the grid loading again) can take back an error it showed.
let messageTimer = null;
function say(text, ok = false, from = "") {
  const box = $("#message-box");
  $("#message").textContent = text;
  box.classList.toggle("ok", ok);
  box.hidden = !text;
  state.messageFrom = text ? from : "";
  clearTimeout(messageTimer);
  if (text && ok) messageTimer = setTimeout(() => { box.hidden = true; }, 8000);
}

function guard(action) {
  return (...args) => Promise.resolve().then(() => action(...args)).catch((error) => say(error.message));
}

const fixed = (value, digits = 2) => (typeof value === "number" ? value.toFixed(digits) : "–");
const plural = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;

function confirmDelete(text) {
  const dialog = $("#confirm");
  $("#confirm-text").textContent = text;
  return new Promise((resolve) => {
    const done = (answer) => () => { dialog.close(); resolve(answer); };
    $("#confirm-yes").onclick = done(true);
    $("#confirm-no").onclick = done(false);
    dialog.oncancel = () => resolve(false);
    dialog.showModal();
    $("#confirm-no").focus();
  });
}

// Thumbnails load only when they come near the screen: natively (loading="lazy") when no key is
// needed; with a key, an <img src> cannot send it, so an IntersectionObserver fetches them.
const blobUrls = new WeakMap();
const thumbObserver = new IntersectionObserver((entries) => {
  for (const entry of entries) {
    if (!entry.isIntersecting) continue;
    const img = entry.target;
    thumbObserver.unobserve(img);
    authorisedFetch(img.dataset.src).then((r) => (r.ok ? r.blob() : null)).then((blob) => {
      if (!blob) return;
      const url = URL.createObjectURL(blob);
      blobUrls.set(img, url);
      img.src = url;
    }).catch(() => {});
  }
}, { rootMargin: "400px" });

function thumbnail(imageId, size = 300, alt = "") {
  const path = `/custom/images/${enc(imageId)}/thumbnail?size=${size}`;
  if (!apiKey()) return el("img", { src: path, alt, loading: "lazy", decoding: "async", width: 300, height: 300 });
  const img = el("img", { alt, "data-src": path, width: 300, height: 300 });
  thumbObserver.observe(img);
  return img;
}

function forgetImages(root) {
  for (const img of root.querySelectorAll("img")) {
    thumbObserver.unobserve(img);
    const url = blobUrls.get(img);
    if (url) URL.revokeObjectURL(url);
  }
}

// --- tags overview ---------------------------------------------------------------------------

// How many library images each tag matches: one request a tag, so asked only for the rows that
// come into view (a server with thousands of tags had got thousands of requests on every
// refresh). A count is kept while the tag's version stays, once the library's scores come from
// that version (until a worker has rescored it, the count is shown and asked for again shortly);
// added or deleted images drop every count kept.
const matchCounts = new Map();  // tag -> {version, count}
const countsWanted = [];
let countsAsked = 0;
const countObserver = new IntersectionObserver((entries) => {
  for (const entry of entries) {
    if (!entry.isIntersecting) continue;
    countObserver.unobserve(entry.target);
    countsWanted.push(entry.target);
  }
  askForCounts();
}, { rootMargin: "200px" });

function askForCounts() {
  while (countsAsked < 4 && countsWanted.length) {
    const cell = countsWanted.shift();
    if (!cell.isConnected) continue;
    const { tag, version } = cell.dataset;
    countsAsked += 1;
    api("GET", `/custom/images?tag=${enc(tag)}&match=true&limit=1`)
      .then((page) => {
        cell.textContent = String(page.total);
        const scoresFrom = page.tags && Object.hasOwn(page.tags, tag) ? page.tags[tag].scores_from : null;  // (a tag may be 'constructor')
        if (scoresFrom === Number(version)) matchCounts.set(tag, { version: scoresFrom, count: page.total });
        else setTimeout(() => { if (cell.isConnected) countObserver.observe(cell); }, 3000);  // not rescored yet
      })
      .catch(() => { cell.textContent = "?"; })
      .finally(() => { countsAsked -= 1; askForCounts(); });
  }
}

function matchesCell(t) {
  if (!t.model) return el("td", { class: "matches" }, "–");
  const known = matchCounts.get(t.tag);
  if (known && known.version === t.model.version) return el("td", { class: "matches" }, String(known.count));
  const cell = el("td", { class: "matches", "data-tag": t.tag, "data-version": t.model.version }, "…");
  countObserver.observe(cell);
  return cell;
}

function tagRow(t) {
  const m = (t.model && t.model.metrics) || {};
  return el("tr", { "data-tag": t.tag, class: t.tag === state.tag ? "current" : null },
    el("th", { scope: "row" }, el("button", { type: "button", class: "link open-tag", onclick: guard(() => openTag(t.tag)) }, t.tag)),
    el("td", {}, String(t.positives)), el("td", {}, String(t.negatives)),
    el("td", {}, t.model ? `v${t.model.version}` : "none"),
    el("td", {}, fixed(m.f1)), el("td", {}, fixed(m.precision)), el("td", {}, fixed(m.recall)), el("td", {}, fixed(m.roc_auc)),
    matchesCell(t),
    el("td", {}, el("button", { type: "button", class: "danger delete-tag", "aria-label": `Delete tag ${t.tag}`,
      onclick: guard(() => deleteTag(t.tag)) }, "Delete")));
}

function tagRowOf(tag) {
  return [...document.querySelectorAll("#tags-body tr")].find((row) => row.dataset.tag === tag) || null;
}

// The table shows the tags a page at a time (a server may hold thousands), those whose name holds
// the filter's text; "More tags" appends the next page.
const TAGS_PAGE = 200;
const tagsList = {
  next: null,
  asked: 0,
  filter: "",               // the filter the table was drawn with
  drawn: 0,                 // redraws applied: a next page is added only to the drawing it continues
  redrawing: 0,             // redraws asked for and not answered yet
  touched: new Set(),       // tags whose row changed meanwhile: put right again after the redraw
};

// Draws the table's first page again, as the filter asks.
async function loadTags() {
  const filter = $("#tag-filter").value.trim();
  const asked = ++tagsList.asked;
  tagsList.redrawing += 1;
  let answer;
  try {
    answer = await api("GET", `/custom/tags?${new URLSearchParams({ contains: filter, limit: String(TAGS_PAGE) })}`);
  } finally {
    tagsList.redrawing -= 1;
  }
  if (asked !== tagsList.asked) return;  // a newer redraw draws the table
  countObserver.disconnect();
  countsWanted.length = 0;
  $("#tags-body").replaceChildren(...answer.tags.map(tagRow));
  tagsList.drawn += 1;
  tagsList.filter = filter;
  tagsList.next = answer.next;
  showTagsState();
  const touched = [...tagsList.touched];  // changed after this redraw was asked for: it may not show that
  tagsList.touched.clear();
  for (const tag of touched) guard(() => updateTagRow(tag))();
}

// Appends the next page of what the table shows; only where the table still ends (not twice, nor
// after a redraw that went back to the first page).
async function moreTags() {
  const { filter, next: after, drawn } = tagsList;
  if (after === null) return;
  const query = new URLSearchParams({ contains: filter, limit: String(TAGS_PAGE), after });
  const { tags, next } = await api("GET", `/custom/tags?${query}`);
  if (drawn !== tagsList.drawn || after !== tagsList.next) return;
  $("#tags-body").append(...tags.map(tagRow));
  tagsList.next = next;
  showTagsState();
}

// Compares two names by code point, as the server sorts tags (JavaScript's < compares UTF-16
// units, which puts an emoji before U+E000-U+FFFF).
function byCodePoint(a, b) {
  const x = [...a];
  const y = [...b];
  for (let i = 0; i < Math.min(x.length, y.length); i += 1) {
    const d = x[i].codePointAt(0) - y[i].codePointAt(0);
    if (d) return d;
  }
  return x.length - y.length;
}

// Puts the tag's row as the server has it now: replaced, taken out (no examples and no model
// left), or put in its place if the table, as filtered and paged, lists the tag (not when the
// answer to a later update drew the row already). Returns the tag's counts and model (null: no
// such tag).
const rowDrawn = new Map();  // tag -> number of the latest update whose answer drew its row
let rowUpdates = 0;
async function updateTagRow(tag) {
  const asked = ++rowUpdates;
  if (tagsList.redrawing) tagsList.touched.add(tag);
  let info = null;
  try {
    const t = await api("GET", `/custom/tags/${enc(tag)}`);
    info = { tag: t.tag, positives: t.positives.length, negatives: t.negatives.length, model: t.model };
  } catch (error) {
    if (error.code !== "unknown_tag") throw error;
  }
  if ((rowDrawn.get(tag) || 0) > asked) return info;  // a later update's answer came first
  rowDrawn.set(tag, asked);
  const row = tagRowOf(tag);  // looked up after the answer: a redraw may have replaced the rows
  if (row && info) {
    row.replaceWith(tagRow(info));
  } else if (row) {
    row.remove();
  } else if (info && tableLists(tag)) {
    const before = [...document.querySelectorAll("#tags-body tr")].find((other) => byCodePoint(other.dataset.tag, tag) > 0);
    $("#tags-body").insertBefore(tagRow(info), before || null);
  }
  showTagsState();
  return info;
}

function showTagsState() {
  const filter = tagsList.filter;
  const none = !$("#tags-body").children.length;
  $("#more-tags").hidden = tagsList.next === null;
  $("#tags-empty").hidden = !none || Boolean(filter);
  $("#tags-none-match").hidden = !none || !filter;
}

// Whether the table, as filtered and as far as its pages go, would list the tag.
function tableLists(tag) {
  const filter = tagsList.filter.normalize("NFC").toLowerCase();  // as the server reads it
  return tag.toLowerCase().includes(filter) && (tagsList.next === null || byCodePoint(tag, tagsList.next) < 0);
}

async function deleteTag(tag) {
  if (!(await confirmDelete(`Delete the tag '${tag}'? Its examples and every version of its model go; the images stay.`))) return;
  await api("DELETE", `/custom/delete/${enc(tag)}`);
  say(`Deleted the tag '${tag}'.`, true);
  if (tag === state.tag) closeTag();
  rowDrawn.set(tag, ++rowUpdates);  // the latest word on its row: an update asked before draws nothing
  if (tagsList.redrawing) tagsList.touched.add(tag);  // a redraw asked before may list it: checked after
  tagRowOf(tag)?.remove();  // the table keeps the pages it shows
  showTagsState();
}

// --- one tag: the workspace ------------------------------------------------------------------

async function openTag(tag) {
  tag = tag.trim();
  if (!tag) return;
  // A browser sends "/custom/tags/.." as "/custom/": a name starting with a dot never reaches the
  // server, which refuses such names anyway.
  if (tag.startsWith(".")) throw new ApiError("A tag may not start with a dot.", 400, "invalid_tag");
  try {
    await api("GET", `/custom/tags/${enc(tag)}`);  // a name no new tag may have is refused here, saying why
  } catch (error) {
    if (error.code !== "unknown_tag") throw error;
  }
  state.tag = tag;
  localStorage.setItem("tagsmith.tag", tag);
  state.selected.clear();
  state.undo = null;
  state.previousVersion = null;
  $("#workspace").hidden = false;
  $("#tag-name").textContent = `'${tag}'`;
  $("#filters").reset();
  $("#compare").replaceChildren();
  for (const row of document.querySelectorAll("#tags-body tr")) row.classList.toggle("current", row.dataset.tag === tag);
  await refreshTag();
  await reloadImages();
  $("#workspace-title").focus({ preventScroll: true });  // keyboard users carry on from the tag's heading
  $("#workspace").scrollIntoView({ block: "start" });
  const training = JSON.parse(localStorage.getItem(TRAINING_KEY) || "null");
  if (training && training.tag === tag && !(state.following && state.following.taskId === training.taskId)) {  // reloaded while it trained
    guard(() => follow(training.taskId, training.tag, training.before))();
  }
}

function closeTag() {
  state.tag = "";
  localStorage.removeItem("tagsmith.tag");
  $("#workspace").hidden = true;
  forgetImages($("#gallery"));
  $("#gallery").replaceChildren();
}

// The open tag's counts, model, versions and suggestions again, and its row of the tags table
// (a labelling changes nothing else there).
let refreshes = 0;
let refreshApplied = 0;  // the latest refresh whose answer is shown
async function refreshTag() {
  const tag = state.tag;
  if (!tag) return;  // closed meanwhile
  const asked = ++refreshes;
  const info = await updateTagRow(tag);
  if (asked < refreshApplied || tag !== state.tag) return;  // a later refresh's answer came first, or another tag opened
  refreshApplied = asked;
  state.known = false;
  state.hasModel = false;
  state.positives = state.negatives = 0;
  if (info) {
    state.known = true;
    state.hasModel = info.model !== null;
    state.positives = info.positives;
    state.negatives = info.negatives;
  }
  renderCounts();
  await Promise.all([loadVersions(), loadSuggestions()]);
}

function renderCounts() {
  $("#counts").textContent = `${state.positives} positive · ${state.negatives} negative`;
  $("#train").disabled = state.positives === 0 || Boolean(state.following && state.following.tag === state.tag);
  $("#f-match").disabled = !state.hasModel;
  $("#f-min").disabled = $("#f-max").disabled = !state.hasModel;
  $("#f-label").disabled = !state.known;
}

// --- the library grid ------------------------------------------------------------------------

// The filters as they are now, as the library's query (without cursor and limit).
function query() {
  const params = new URLSearchParams();
  if (state.known) params.set("tag", state.tag);
  const form = $("#filters");
  for (const name of ["label", "match", "min_score", "max_score", "filename", "sort", "order"]) {
    const field = form.elements[name];
    if (field.value !== "" && !field.disabled) params.set(name, field.value.trim());
  }
  if (params.get("sort") === "score" && !state.hasModel) params.delete("sort");
  return params;
}

// A page of this generation's query: a cursor is only ever sent with the query it came from.
async function fetchPage(cursor, limit = PAGE) {
  const params = new URLSearchParams(state.params);
  if (cursor) params.set("cursor", cursor);
  params.set("limit", String(limit));
  return api("GET", `/custom/images?${params}`);
}

// What is wrong with the score filters, named as the page names them (null: nothing).
function badScoreFilter() {
  const values = [];
  for (const [name, label] of [["min_score", "Score from"], ["max_score", "to"]]) {
    const field = $("#filters").elements[name];
    const value = field.value.trim();
    if (!field.disabled && value !== "" && !(Number(value) >= 0 && Number(value) <= 1)) {
      return `The score filter ('${label}') takes a number from 0 to 1.`;
    }
    values.push(field.disabled || value === "" ? null : Number(value));
  }
  if (values[0] !== null && values[1] !== null && values[0] > values[1]) return "The score filter's 'Score from' is above its 'to'.";
  return null;
}

async function reloadImages() {
  state.generation += 1;
  state.params = query();
  state.typing = false;
  state.loading = false;  // a load of the old query still running ends unseen
  state.pages = [];
  state.cursors = [null];
  state.firstPage = 0;
  state.anchor = null;
  forgetImages($("#gallery"));
  $("#gallery").replaceChildren();
  const problem = badScoreFilter();
  if (problem) {
    $("#gallery").setAttribute("aria-busy", "false");  // nothing to wait for: the filter is wrong
    $("#total").textContent = "–";
    $("#more").hidden = $("#earlier").hidden = true;
    say(problem, false, "library");
    return;
  }
  await loadPage("end");
}

function renderTotal() {
  $("#total").textContent = plural(state.total, "image");
  const n = state.selected.size;
  $("#selected-count").textContent = n ? `${n} selected` : "";
  $("#undo").disabled = !state.undo;
}

// Loads the page after the last one shown ("end") or before the first ("start"), keeping at most
// KEPT_PAGES pages of cards in the DOM.
async function loadPage(where) {
  if (state.loading || state.typing) return;
  const index = where === "end" ? state.firstPage + state.pages.length : state.firstPage - 1;
  if (index < 0 || index >= state.cursors.length) return;
  state.loading = true;
  $("#gallery").setAttribute("aria-busy", "true");
  const generation = state.generation;
  try {
    let page;
    try {
      page = await fetchPage(state.cursors[index]);
    } catch (error) {
      if (generation !== state.generation) return;
      if (!state.pages.length) $("#total").textContent = "–";  // no count for a query that failed
      say(error.message, false, "library");
      return;
    }
    if (generation !== state.generation) return;
    if (state.messageFrom === "library") say("");  // the error of a load before is over
    state.total = page.total;
    if (page.next && state.cursors.length === index + 1) state.cursors.push(page.next);
    for (const image of page.images) state.labels.set(image.image_id, image.label ?? null);
    const block = el("ul", { class: "grid page", "data-page": index }, ...page.images.map(libraryCard));
    const entry = { index, next: page.next, images: page.images, block };
    if (where === "end") {
      state.pages.push(entry);
      $("#gallery").append(block);
      if (state.pages.length > KEPT_PAGES) dropPage("start");
    } else {
      state.pages.unshift(entry);
      state.firstPage = index;
      $("#gallery").prepend(block);
      if (state.pages.length > KEPT_PAGES) dropPage("end");
    }
    const last = state.pages[state.pages.length - 1];
    $("#more").hidden = !last.next;
    $("#earlier").hidden = state.firstPage === 0;
    renderTotal();
    refreshRoving();
    if (last.next && scrollObserver && state.pages.length < KEPT_PAGES) {  // the end still in reach (short pages): said again
      scrollObserver.unobserve($("#sentinel"));
      scrollObserver.observe($("#sentinel"));
    }
  } finally {
    if (generation === state.generation) {
      state.loading = false;
      if (!state.typing) $("#gallery").setAttribute("aria-busy", "false");
    }
  }
}

function dropPage(side) {
  const entry = side === "start" ? state.pages.shift() : state.pages.pop();
  if (side === "start") state.firstPage = entry.index + 1;
  forgetImages(entry.block);
  entry.block.remove();
}

function libraryCard(image) {
  const id = image.image_id;
  const name = image.filename || id;
  const score = typeof image.score === "number" ? `score ${image.score.toFixed(2)}${image.match ? " ✓" : ""}` : "";
  const pick = el("button", {
    type: "button", class: "pick", tabindex: "-1", "aria-pressed": String(state.selected.has(id)),
    title: name, onclick: (event) => pickClicked(id, event), onkeydown: gridKey,
  }, thumbnail(id), el("span", { class: "caption" }, name), el("span", { class: "score" }, score));
  const item = el("li", { class: "card", "data-image-id": id },
    pick,
    el("div", { class: "buttons" },
      // Out of the tab order (p, n and Enter do the same on the focused card): Tab leaves the grid.
      el("button", { type: "button", class: "pos", tabindex: "-1", "aria-label": `Positive: ${name}`, title: "positive example",
        onclick: guard(() => labelImages([id], "positive")) }, "+"),
      el("button", { type: "button", class: "neg", tabindex: "-1", "aria-label": `Negative: ${name}`, title: "negative example",
        onclick: guard(() => labelImages([id], "negative")) }, "−"),
      el("button", { type: "button", class: "info", tabindex: "-1", "aria-label": `Details: ${name}`, title: "details",
        onclick: guard(() => openDetail(id)) }, "Details")));
  paintCard(item);
  return item;
}

function paintCard(item) {
  const id = item.dataset.imageId;
  const label = state.labels.get(id) ?? null;
  item.classList.toggle("positive", label === "positive");
  item.classList.toggle("negative", label === "negative");
  item.classList.toggle("selected", state.selected.has(id));
  const pick = item.querySelector(".pick");
  if (pick) pick.setAttribute("aria-pressed", String(state.selected.has(id)));
  const badge = label ? (label === "positive" ? "positive" : "negative") : "";
  item.dataset.label = badge;
}

function paintAll() {
  for (const item of document.querySelectorAll(".card[data-image-id]")) paintCard(item);
  renderTotal();
}

function picks() { return [...document.querySelectorAll("#gallery .pick")]; }

// One card of the grid is in the tab order at a time (a roving tabindex); arrows move it.
function refreshRoving() {
  const all = picks();
  if (!all.length) return;
  const current = all.find((b) => b.tabIndex === 0) || all[0];
  for (const b of all) b.tabIndex = b === current ? 0 : -1;
}

function focusPick(target) {
  if (!target) return;
  for (const b of picks()) b.tabIndex = -1;
  target.tabIndex = 0;
  target.focus();
  target.scrollIntoView({ block: "nearest" });
}

function idOf(pick) { return pick.closest(".card").dataset.imageId; }

function pickClicked(id, event) {
  if (event.shiftKey && state.anchor) selectRange(state.anchor, id);
  else toggle(id);
  state.anchor = id;
  focusPick(event.currentTarget);
}

function toggle(id) {
  if (state.selected.has(id)) state.selected.delete(id);
  else state.selected.add(id);
  paintAll();
}

function selectRange(fromId, toId) {
  const ids = picks().map(idOf);
  let a = ids.indexOf(fromId);
  const b = ids.indexOf(toId);
  if (a < 0) a = b;
  for (const id of ids.slice(Math.min(a, b), Math.max(a, b) + 1)) state.selected.add(id);
  paintAll();
}

function neighbour(from, key) {
  const all = picks();
  const i = all.indexOf(from);
  if (key === "ArrowLeft") return all[i - 1];
  if (key === "ArrowRight") return all[i + 1];
  const box = from.getBoundingClientRect();
  const down = key === "ArrowDown";
  const rows = all.filter((b) => { const r = b.getBoundingClientRect(); return down ? r.top > box.top + 5 : r.top < box.top - 5; });
  if (!rows.length) return null;
  const rowTop = down ? Math.min(...rows.map((b) => b.getBoundingClientRect().top)) : Math.max(...rows.map((b) => b.getBoundingClientRect().top));
  const row = rows.filter((b) => Math.abs(b.getBoundingClientRect().top - rowTop) < 5);
  return row.reduce((best, b) => (Math.abs(b.getBoundingClientRect().left - box.left) < Math.abs(best.getBoundingClientRect().left - box.left) ? b : best));
}

function gridKey(event) {
  const pick = event.currentTarget;
  if (event.key.startsWith("Arrow")) {
    event.preventDefault();
    const target = neighbour(pick, event.key);
    if (target) {
      if (event.shiftKey) selectRange(idOf(pick), idOf(target));
      focusPick(target);
    } else if (event.key === "ArrowDown" || event.key === "ArrowRight") {
      if (!$("#more").hidden) guard(() => loadPage("end"))();
    }
  } else if (event.key === "Enter") {  // space is the button's own click: it selects
    event.preventDefault();
    guard(() => openDetail(idOf(pick)))();
  }
}

// Labels the selection (then clears it) or, with none, the focused image.
async function labelTargets(type) {
  const fromSelection = state.selected.size > 0;
  await labelImages(targets(), type);
  if (fromSelection) {
    state.selected.clear();
    paintAll();
  }
}

function targets() {
  if (state.selected.size) return [...state.selected];
  const focused = document.activeElement && document.activeElement.closest("#gallery .card");
  return focused ? [focused.dataset.imageId] : [];
}

// Labels images for the open tag (type null: unlabel); remembers what they were, for undo.
async function labelImages(ids, type, remember = true) {
  if (!state.tag) return;
  if (!ids.length) {
    say("Select images first (click, shift-click, space or \"Select all filtered\").");
    return;
  }
  const tag = state.tag;
  const before = ids.map((id) => [id, state.labels.has(id) ? state.labels.get(id) : undefined]);
  if (before.some(([, label]) => label === undefined)) {
    // Labels not yet known here (e.g. "select all" beyond the pages shown): ask the server.
    await inParallel(before.filter(([, label]) => label === undefined), LABELS_AT_ONCE, async (pair) => {
      const info = await api("GET", `/custom/images/${enc(pair[0])}`);
      pair[1] = Object.hasOwn(info.tags, tag) ? info.tags[tag] : null;  // (a tag may be 'constructor')
    });
  }
  const changing = before.filter(([, label]) => label !== type);
  let done = 0;
  const status = $("#upload-status");
  await inParallel(changing, LABELS_AT_ONCE, async ([id]) => {
    if (type) await api("POST", `/custom/assign/${enc(id)}/${type}/${enc(tag)}`);
    else await api("POST", `/custom/unassign/${enc(id)}/${enc(tag)}`);
    state.labels.set(id, type);
    done += 1;
    if (changing.length > 20) status.textContent = `Labelling: ${done} of ${changing.length}`;
  });
  if (remember && changing.length) state.undo = { tag, type, changes: changing };
  const word = type ? type : "unlabelled";
  say(`${plural(changing.length, "image")} ${type ? `labelled ${word}` : word} for '${tag}'.`, true);
  paintAll();
  if (changing.length) await afterLabelling(tag);
}

async function afterLabelling(tag) {
  if (tag !== state.tag) { await updateTagRow(tag); return; }  // closed or another opened meanwhile
  const wasKnown = state.known;
  await refreshTag();
  if (!wasKnown && state.known) {
    const selected = new Set(state.selected);
    await reloadImages();
    state.selected = selected;
    paintAll();
  }
}

async function undo() {
  const last = state.undo;
  if (!last) return;
  if (last.tag !== state.tag) { say("The last labelling was for another tag."); return; }
  state.undo = null;
  await inParallel(last.changes, LABELS_AT_ONCE, async ([id, before]) => {
    if (before) await api("POST", `/custom/assign/${enc(id)}/${before}/${enc(last.tag)}`);
    else await api("POST", `/custom/unassign/${enc(id)}/${enc(last.tag)}`);
    state.labels.set(id, before);
  });
  say(`Undone: ${plural(last.changes.length, "image")} back as they were.`, true);
  paintAll();
  await refreshTag();
}

// Every image the filters find, page after page (only their ids are kept, not cards).
async function selectAllFiltered() {
  if (state.typing) await reloadImages();  // the search being typed is what is selected from
  const generation = state.generation;
  let cursor = null;
  let count = 0;
  do {
    const page = await fetchPage(cursor, 500);
    if (generation !== state.generation) return;
    for (const image of page.images) {
      state.selected.add(image.image_id);
      state.labels.set(image.image_id, image.label ?? null);
    }
    count += page.images.length;
    $("#selected-count").textContent = `${state.selected.size} selected…`;
    cursor = page.next;
  } while (cursor);
  paintAll();
  say(`Selected ${plural(count, "image")}.`, true);
}

async function deleteImages(ids) {
  if (!ids.length) { say("Select images to delete first."); return; }
  const what = ids.length === 1 ? "this image from the library? It is" : `these ${ids.length} images from the library? They are`;
  if (!(await confirmDelete(`Delete ${what} removed from every tag.`))) return;
  await inParallel(ids, LABELS_AT_ONCE, (id) => api("DELETE", `/custom/images/${enc(id)}`));
  for (const id of ids) {
    state.selected.delete(id);
    state.labels.delete(id);
    for (const card of document.querySelectorAll(`.card[data-image-id="${CSS.escape(id)}"]`)) {
      forgetImages(card);
      card.remove();
    }
  }
  if (state.undo) state.undo.changes = state.undo.changes.filter(([id]) => !ids.includes(id));
  state.total = Math.max(0, state.total - ids.length);
  matchCounts.clear();  // the images may have matched any tag
  say(`Deleted ${plural(ids.length, "image")}.`, true);
  paintAll();
  await refreshTag();
}

// --- uploads ---------------------------------------------------------------------------------

async function upload(fileList) {
  const files = [...fileList];
  if (!files.length) return;
  if (!state.tag) { say("Open or create a tag first."); return; }
  const kind = document.querySelector("input[name=kind]:checked").value;
  const tag = state.tag;
  const list = $("#upload-list");
  const rows = files.map((file) => {
    const bar = el("progress", { max: "100", value: "0", "aria-label": `Upload of ${file.name}` });
    const text = el("span", { class: "upload-state" }, "waiting");
    const row = el("li", { "data-filename": file.name }, el("span", { class: "upload-name" }, file.name), bar, text);
    list.append(row);
    return { row, bar, text };
  });
  let added = 0;
  let failed = 0;
  const path = kind === "none" ? "/custom/add_many" : `/custom/add_many?tag=${enc(tag)}&type=${kind}`;
  await inParallel(files, UPLOADS_AT_ONCE, async (file, i) => {
    const { row, bar, text } = rows[i];
    text.textContent = "uploading";
    const form = new FormData();
    form.append("data", file, file.name);
    try {
      const answer = await uploadWithProgress(path, form, (part) => { bar.value = Math.round(part * 100); });
      const result = answer.images[0];
      if (result.error) throw new ApiError(result.message, result.status, result.error);
      bar.value = 100;
      row.classList.add("done");
      text.textContent = result.duplicate ? "already in the library" : "added";
      if (kind !== "none") state.labels.set(result.image_id, kind);
      added += 1;
    } catch (error) {
      row.classList.add("failed");
      text.textContent = `failed: ${error.message}`;
      failed += 1;
    }
  });
  matchCounts.clear();  // the library grew: any tag's matches may have too
  $("#upload-status").textContent = `Added ${plural(added, "image")}${kind === "none" ? "" : ` as ${kind}s of '${tag}'`}`
    + (failed ? `; ${failed} failed (see above).` : ".");
  if (tag === state.tag) {
    await refreshTag();
    await reloadImages();
  }
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

// --- image details ---------------------------------------------------------------------------

async function openDetail(imageId) {
  const dialog = $("#detail");
  const body = $("#detail-body");
  forgetImages(body);
  $("#detail-title").textContent = "…";
  body.replaceChildren(el("p", { class: "muted" }, "Loading…"));
  if (!dialog.open) dialog.showModal();
  const info = await api("GET", `/custom/images/${enc(imageId)}`);
  $("#detail-title").textContent = info.filename || imageId;
  const labels = Object.entries(info.tags || {});
  const scoresBox = el("div", { id: "detail-scores" }, el("p", { class: "muted" }, "Scoring…"));
  const similarBox = el("div", { id: "detail-similar" }, el("p", { class: "muted" }, "Finding similar images…"));
  const actions = state.tag ? el("div", { class: "row" },
    el("span", {}, `For '${state.tag}':`),
    el("button", { type: "button", class: "pos", onclick: guard(() => detailLabel(imageId, "positive")) }, "Positive"),
    el("button", { type: "button", class: "neg", onclick: guard(() => detailLabel(imageId, "negative")) }, "Negative"),
    el("button", { type: "button", onclick: guard(() => detailLabel(imageId, null)) }, "Unlabel")) : null;
  body.replaceChildren(el("div", { class: "detail" },
    el("img", { src: "", alt: info.filename || imageId, class: "detail-image" }),
    el("div", {},
      el("dl", { class: "facts" },
        el("dt", {}, "File name"), el("dd", { id: "detail-filename" }, info.filename || "–"),
        el("dt", {}, "Image id"), el("dd", {}, imageId),
        el("dt", {}, "Size"), el("dd", {}, `${info.width} × ${info.height} ${info.format || ""}`),
        el("dt", {}, "Added"), el("dd", {}, info.created_at ? new Date(info.created_at).toLocaleString() : "–")),
      el("h3", {}, "Example of"),
      labels.length
        ? el("ul", { id: "detail-labels" }, ...labels.map(([tag, type]) => el("li", { class: `${type}-text` }, `${tag}: ${type}`)))
        : el("p", { id: "detail-labels", class: "muted" }, "no tag yet"),
      actions,
      el("h3", {}, "Scores"), scoresBox,
      el("button", { type: "button", class: "danger", id: "detail-delete", onclick: guard(() => detailDelete(imageId)) }, "Delete image"))),
  el("h3", {}, "Similar images"), similarBox);
  const img = body.querySelector(".detail-image");
  const big = thumbnail(imageId, 512, info.filename || imageId);
  big.className = "detail-image";
  big.removeAttribute("loading");
  img.replaceWith(big);
  await Promise.all([detailScores(imageId, scoresBox), detailSimilar(imageId, similarBox)]);
}

async function detailScores(imageId, box) {
  try {
    const { custom } = await api("GET", `/custom/predict/${enc(imageId)}`);
    const items = Object.entries(custom).map(([tag, s]) => [`${tag}${s.match ? " ✓" : ""}`, s.score, s.match]);
    box.replaceChildren(items.length ? scoreList(items) : el("p", { class: "muted" }, "No tag has a model yet."));
  } catch (error) {
    box.replaceChildren(el("p", { class: "muted" }, `Scores unavailable: ${error.message}`));
  }
}

async function detailSimilar(imageId, box) {
  try {
    const answer = await api("GET", `/custom/images/${enc(imageId)}/similar?limit=8`);
    box.replaceChildren(answer.similar.length
      ? el("ul", { class: "grid small" }, ...answer.similar.map((s) => el("li", { class: "card" },
        el("button", { type: "button", class: "pick", title: s.filename || s.image_id, onclick: guard(() => openDetail(s.image_id)) },
          thumbnail(s.image_id), el("span", { class: "caption" }, s.filename || s.image_id),
          el("span", { class: "score" }, `similarity ${fixed(s.similarity)}`)))))
      : el("p", { class: "muted" }, "No other image yet."));
  } catch (error) {
    const text = error.code === "not_embedded" ? "Not ready yet: a worker has not embedded this image. Try again in a few seconds."
      : `Similar images unavailable: ${error.message}`;
    box.replaceChildren(el("p", { class: "muted" }, text));
  }
}

async function detailLabel(imageId, type) {
  await labelImages([imageId], type);
  await openDetail(imageId);
}

async function detailDelete(imageId) {
  $("#detail").close();
  await deleteImages([imageId]);
}

// --- training and versions -------------------------------------------------------------------

async function train() {
  const tag = state.tag;
  const current = state.versions && state.versions.versions.find((v) => v.current);
  const before = current ? current.version : null;
  const task = await api("POST", `/custom/train/${enc(tag)}`);
  localStorage.setItem(TRAINING_KEY, JSON.stringify({ tag, taskId: task.task_id, before }));
  await follow(task.task_id, tag, before);
}

// Shows a training's progress until it ends (`before`: the version in use when it was asked for).
async function follow(taskId, tag, before) {
  const bar = document.querySelector("#training .progress");
  state.following = { taskId, tag };
  renderCounts();
  $("#training").hidden = false;
  say("");
  try {
    await followSteps(taskId, tag, before, bar);
  } catch (error) {
    if (error.status !== 404) throw error;  // (the saved task stays: a reload follows it again)
    $("#training").hidden = true;  // the task's record is gone (days old): nothing to show
  } finally {
    state.following = null;
    renderCounts();
  }
  const saved = JSON.parse(localStorage.getItem(TRAINING_KEY) || "null");
  if (saved && saved.taskId === taskId) localStorage.removeItem(TRAINING_KEY);
  if (tag === state.tag) {
    await refreshTag();
    await reloadImages();
  } else {
    await updateTagRow(tag);  // the pages of the table shown stay
  }
}

async function followSteps(taskId, tag, before, bar) {
  for (let failures = 0; ; ) {
    let status;
    try {
      status = await api("GET", `/status/${enc(taskId)}`);
      failures = 0;
    } catch (error) {  // the server restarting or busy: asked again, for a minute
      if (error.status === 404 || error.status === 401 || (failures += 1) > 30) throw error;
      await new Promise((resolve) => setTimeout(resolve, 2000));
      continue;
    }
    const percent = Math.round(100 * (status.progress || 0));
    $("#progress-fill").style.width = `${percent}%`;
    bar.setAttribute("aria-valuenow", String(percent));
    $("#progress-text").textContent = `${status.stage || status.status} ${percent}%`;
    if (status.status === "finished") {
      const { version, published } = status.result;
      $("#progress-text").textContent = `Trained version ${version}`;
      say(published === false
        ? `Trained '${tag}': version ${version} is kept, but a newer version, trained meanwhile, stays in use.`
        : `Trained '${tag}': version ${version} is now in use.`, true);
      if (tag === state.tag) state.previousVersion = before;
      return;
    }
    if (status.status === "failed") {
      say(status.error || "The training failed.");
      return;
    }
    await new Promise((resolve) => setTimeout(resolve, 500));
  }
}

const METRICS = [["roc_auc", "ROC AUC"], ["f1", "F1"], ["precision", "Precision"], ["recall", "Recall"], ["accuracy", "Accuracy"]];

function examplesText(m) {
  const presumed = m.presumed_negatives ? ` (+ ${m.presumed_negatives} presumed)` : "";
  return `${m.positives ?? "?"} + / ${m.negatives ?? "?"} −${presumed}`;
}

// A version loaded with /set_state says where it came from (metrics.origin).
function originNote(origin) {
  if (!origin) return null;
  const number = origin.version ? ` (v${origin.version} there)` : "";
  return el("div", { class: "muted origin" }, `loaded from a ${origin.loaded_from || "state archive"}${number}`);
}

async function loadVersions() {
  const box = $("#versions");
  state.versions = null;
  $("#threshold-box").hidden = true;
  $("#most-wrong").replaceChildren();
  if (!state.known) {
    box.replaceChildren(el("p", { class: "muted" }, `'${state.tag}' has no examples yet: drop images above.`));
    $("#compare").replaceChildren();
    return;
  }
  const answer = await api("GET", `/custom/versions/${enc(state.tag)}`);
  state.versions = answer;
  if (!answer.versions.length) {
    box.replaceChildren(el("p", { class: "muted" }, `'${state.tag}' has no trained version yet: label a few images, then press Train.`));
    $("#compare").replaceChildren();
    return;
  }
  const head = el("tr", {}, ...["Version", "Trained", "Examples", ...METRICS.map(([, title]) => title), "Threshold", "Action"]
    .map((title) => el("th", { scope: "col" }, title)));
  const rows = answer.versions.slice().reverse().map((v) => {
    const m = v.metrics;
    const action = v.current
      ? el("span", { class: "badge" }, "in use")
      : el("button", { type: "button", class: "rollback", onclick: guard(() => rollback(v.version)) }, `Use v${v.version}`);
    return el("tr", { class: v.current ? "current" : null, "data-version": v.version },
      el("td", {}, `v${v.version}`),
      el("td", {}, v.trained_at ? new Date(v.trained_at).toLocaleString() : "–", originNote(m.origin)),
      el("td", {}, examplesText(m)),
      ...METRICS.map(([key]) => el("td", {}, fixed(m[key]))),
      el("td", {}, v.threshold.toFixed(3)), el("td", {}, action));
  });
  const onnx = answer.current === null ? null : el("p", {}, el("a", {
    id: "export-onnx", href: `/export/onnx?tag=${enc(state.tag)}`, download: "tagsmith-edge.onnx",
    onclick: (event) => downloadWithKey(event).catch((error) => say(error.message)),
  }, `Download '${state.tag}' (v${answer.current}) as ONNX`), el("span", { class: "muted" },
    " — the backbone and this tag's model in one file, for devices"));
  box.replaceChildren(el("h4", {}, "Versions"), el("div", { class: "table-wrap", tabindex: "0", role: "region", "aria-label": "Versions" }, el("table", { id: "versions-table" }, head, ...rows)), onnx);
  const current = answer.versions.find((v) => v.current);
  renderComparison(answer, current);
  if (current) {
    await Promise.all([renderMostWrong(current), setUpThreshold(current)]);
  }
}

// The version in use beside the one before it (after a training: the one it replaced).
function renderComparison(answer, current) {
  const box = $("#compare");
  if (!current) { box.replaceChildren(); return; }
  const byNumber = new Map(answer.versions.map((v) => [v.version, v]));
  let previous = state.previousVersion !== null ? byNumber.get(state.previousVersion) : null;
  if (!previous) {
    const older = answer.versions.filter((v) => v.version < current.version);
    previous = older.length ? older[older.length - 1] : null;
  }
  const cols = previous ? [previous, current] : [current];
  const head = el("tr", {}, el("th", { scope: "col" }, "Cross-validated"),
    ...cols.map((v) => el("th", { scope: "col" }, `v${v.version}${v.current ? " (in use)" : ""}`)),
    previous ? el("th", { scope: "col" }, "Change") : null);
  const rows = [...METRICS, ["threshold", "Threshold"], ["examples", "Examples"]].map(([key, title]) => {
    const value = (v) => (key === "threshold" ? v.threshold : key === "examples" ? null : v.metrics[key]);
    const cells = cols.map((v) => el("td", {}, key === "examples" ? examplesText(v.metrics) : fixed(value(v), key === "threshold" ? 3 : 2)));
    let change = null;
    if (previous) {
      const a = value(previous);
      const b = value(current);
      const delta = typeof a === "number" && typeof b === "number" ? b - a : null;
      change = el("td", { class: delta > 0.005 ? "up" : delta < -0.005 ? "down" : null },
        delta === null ? "" : `${delta >= 0 ? "+" : "−"}${Math.abs(delta).toFixed(key === "threshold" ? 3 : 2)}`);
    }
    return el("tr", { "data-metric": key }, el("th", { scope: "row" }, title), ...cells, change);
  });
  // Said by the server when the version rests on too few examples (text, never markup).
  const caution = current.caution ? el("p", { class: "caution", id: "caution", role: "note" }, current.caution) : null;
  box.replaceChildren(el("h4", {}, previous ? `v${current.version} against v${previous.version}` : `v${current.version}`),
    ...(caution ? [caution] : []),
    el("div", { class: "table-wrap", tabindex: "0", role: "region", "aria-label": "Versions compared" }, el("table", { id: "compare-table" }, head, ...rows)));
}

// Examples the cross-validation got most wrong: candidates for relabelling.
async function renderMostWrong(current) {
  const wrong = current.metrics.most_wrong || [];
  const box = $("#most-wrong");
  if (!wrong.length) {
    box.replaceChildren(el("p", { class: "muted" }, `No example was on the wrong side in v${current.version}'s cross-validation.`));
    return;
  }
  const names = await inParallel(wrong, 4, async (w) => {
    try { return (await api("GET", `/custom/images/${enc(w.image_id)}`)).filename || w.image_id; } catch { return w.image_id; }
  });
  box.replaceChildren(el("h4", {}, `Most wrong in v${current.version}'s cross-validation: check these labels`),
    el("ul", { class: "grid" }, ...wrong.map((w, i) => smallCard(w.image_id, names[i],
      `${w.type.replace("_", " ")}, scored ${fixed(w.score)}`))));
  paintAll();
}

function smallCard(imageId, name, note) {
  const item = el("li", { class: "card", "data-image-id": imageId },
    el("button", { type: "button", class: "pick", title: name, onclick: guard(() => openDetail(imageId)) },
      thumbnail(imageId), el("span", { class: "caption" }, name), el("span", { class: "score" }, note)),
    el("div", { class: "buttons" },
      el("button", { type: "button", class: "pos", "aria-label": `Positive: ${name}`, onclick: guard(() => labelImages([imageId], "positive")) }, "+"),
      el("button", { type: "button", class: "neg", "aria-label": `Negative: ${name}`, onclick: guard(() => labelImages([imageId], "negative")) }, "−"),
      el("button", { type: "button", "aria-label": `Unlabel: ${name}`, onclick: guard(() => labelImages([imageId], null)) }, "×")));
  return item;
}

// The threshold slider: the API keeps no per-example cross-validated scores, so the preview
// uses what it has: the current model's scores of the labelled examples (in-sample, so
// optimistic) and how many library images would match.
const examples = { tag: null, version: null, positives: [], negatives: [] };

async function labelledScores(label) {
  const scores = [];
  let cursor = null;
  do {
    const params = new URLSearchParams({ tag: state.tag, label, limit: "500" });
    if (cursor) params.set("cursor", cursor);
    const page = await api("GET", `/custom/images?${params}`);
    for (const image of page.images) if (typeof image.score === "number") scores.push(image.score);
    cursor = page.next;
  } while (cursor && scores.length < 5000);
  return scores;
}

async function setUpThreshold(current) {
  examples.tag = state.tag;
  examples.version = current.version;
  [examples.positives, examples.negatives] = await Promise.all([labelledScores("positive"), labelledScores("negative")]);
  const slider = $("#threshold");
  slider.value = String(current.threshold);
  slider.dataset.trained = String(current.threshold);
  $("#threshold-box").hidden = false;
  await showThreshold();
}

const libraryMatches = debounce(async (threshold) => {
  try {
    const page = await api("GET", `/custom/images?tag=${enc(state.tag)}&min_score=${threshold}&limit=1`);
    $("#threshold-library").textContent = `${page.total} library images would match`;
  } catch (error) {
    $("#threshold-library").textContent = error.message;
  }
}, 200);

async function showThreshold() {
  const t = Number($("#threshold").value);
  const trained = Number($("#threshold").dataset.trained);
  $("#threshold-value").textContent = `${t.toFixed(2)}${Math.abs(t - trained) < 0.005 ? " (set by training)" : ` (training set ${trained.toFixed(3)})`}`;
  const tp = examples.positives.filter((s) => s >= t).length;
  const fp = examples.negatives.filter((s) => s >= t).length;
  const fn = examples.positives.length - tp;
  const precision = tp + fp ? tp / (tp + fp) : null;
  const recall = tp + fn ? tp / (tp + fn) : null;
  $("#threshold-effect").replaceChildren(
    el("span", { id: "threshold-pr" }, `On the ${plural(examples.positives.length + examples.negatives.length, "labelled example")} (scored by the trained model, not cross-validated): precision ${fixed(precision)}, recall ${fixed(recall)}. `),
    el("span", { id: "threshold-library" }, "…"));
  libraryMatches(t);
}

async function downloadWithKey(event) {
  if (!apiKey()) return;
  event.preventDefault();
  const link = event.currentTarget;
  const response = await authorisedFetch(link.getAttribute("href"));
  if (!response.ok) {
    say(`Download failed: HTTP ${response.status}`);
    return;
  }
  const url = URL.createObjectURL(await response.blob());
  el("a", { href: url, download: link.getAttribute("download") }).click();
  setTimeout(() => URL.revokeObjectURL(url), 60000);
}

async function rollback(version) {
  await api("POST", `/custom/rollback/${enc(state.tag)}/${version}`);
  say(`'${state.tag}' uses version ${version} again.`, true);
  state.previousVersion = null;
  await refreshTag();
  await reloadImages();
}

async function loadSuggestions() {
  const panel = $("#suggest-panel");
  if (!state.hasModel) {
    panel.hidden = true;
    return;
  }
  const answer = await api("GET", `/custom/suggest/${enc(state.tag)}?limit=6`);
  const names = new Map();
  await inParallel([...answer.uncertain, ...answer.likely_positive], 4, async (s) => {
    try { names.set(s.image_id, (await api("GET", `/custom/images/${enc(s.image_id)}`)).filename); } catch { /* gone since */ }
  });
  const cards = (items, none) => (items.length ? items.map((s) => smallCard(s.image_id, names.get(s.image_id) || s.image_id, `score ${fixed(s.score)}`))
    : [el("li", { class: "muted" }, none)]);
  $("#uncertain").replaceChildren(...cards(answer.uncertain, "none: the model is sure of every unlabelled image"));
  $("#likely").replaceChildren(...cards(answer.likely_positive, "none"));
  panel.hidden = answer.candidates === 0;
  paintAll();
}

// --- quick test ------------------------------------------------------------------------------

function scoreList(items) {
  if (!items.length) return el("p", { class: "muted" }, "none");
  return el("ul", { class: "scores" }, ...items.map(([name, score, match]) => el("li", { class: match ? "match" : "nomatch" },
    el("span", { class: "bar", style: `width:${Math.round(score * 80)}px` }), `${name} ${score.toFixed(2)}`)));
}

async function predict(fileList) {
  const file = fileList[0];
  if (!file) return;
  const form = new FormData();
  form.append("data", file, file.name);
  const box = $("#prediction");
  box.replaceChildren(el("p", { class: "muted" }, "Predicting…"));
  let result;
  try {
    result = await api("POST", "/predict", form);
  } catch (error) {
    box.replaceChildren(el("p", { class: "error" }, `${file.name}: ${error.message}`));
    return;
  }
  const custom = Object.entries(result.custom).map(([tag, s]) => [`${tag}${s.match ? " ✓" : ""}`, s.score, s.match]);
  // Every tag with a model (the prediction names each), and those the tags table shows besides.
  const listed = [...document.querySelectorAll("#tags-body tr")].map((row) => row.dataset.tag);
  const names = [...new Set([...(state.tag ? [state.tag] : []), ...[...Object.keys(result.custom), ...listed].sort(byCodePoint)])];
  const choose = el("select", { id: "add-tag" }, ...names.map((name) => el("option", { value: name }, name)));
  const outcome = el("p", { id: "add-result", role: "status" });
  const addAs = async (type) => {
    const tag = choose.value;
    if (!tag) { say("Create a tag first."); return; }
    const data = new FormData();
    data.append("data", file, file.name);
    const answer = await api("POST", `/custom/add_many?tag=${enc(tag)}&type=${type}`, data);
    const row = answer.images[0];
    if (row.error) throw new ApiError(`${row.filename}: ${row.message}`, row.status, row.error);
    outcome.textContent = `${row.filename} ${row.duplicate ? "was in the library already; it is now" : "added as"} a ${type} of '${tag}'.`;
    if (tag === state.tag) { await refreshTag(); await reloadImages(); } else { await updateTagRow(tag); }
  };
  const preview = el("img", { alt: file.name, class: "preview" });
  preview.src = URL.createObjectURL(file);
  box.replaceChildren(
    el("figure", {}, preview, el("figcaption", {}, file.name)),
    el("div", { id: "prediction-result" },
      el("h3", {}, "Custom tags"), scoreList(custom),
      el("h3", {}, "Keywords"), scoreList(result.keywords.map((k) => [k.name, k.score, true])),
      el("h3", {}, "Styles"), scoreList(result.styles.map((s) => [s.name, s.score, true])),
      el("h3", {}, "Add to the library"),
      names.length ? el("div", { class: "row" },
        el("label", { for: "add-tag" }, "Tag"), choose,
        el("button", { type: "button", class: "pos", id: "add-positive", onclick: guard(() => addAs("positive")) }, "Add as positive"),
        el("button", { type: "button", class: "neg", id: "add-negative", onclick: guard(() => addAs("negative")) }, "Add as negative"))
        : el("p", { class: "muted" }, "Create a tag to add this photo to it."),
      outcome));
}

// --- wiring ----------------------------------------------------------------------------------

let scrollObserver = null;  // loads the next page as the grid's end comes near

function debounce(action, ms) {
  let timer;
  return (...args) => { clearTimeout(timer); timer = setTimeout(() => action(...args), ms); };
}

function typing(target) {
  return target instanceof HTMLElement && (target.matches("input, select, textarea") || target.isContentEditable);
}

function pageKey(event) {
  if (event.ctrlKey || event.metaKey || event.altKey || typing(event.target)) return;
  if ($("#detail").open || $("#confirm").open) return;
  if (event.key === "?") {
    event.preventDefault();
    $("#help").showModal();
    return;
  }
  if (!state.tag || $("#help").open) return;
  const actions = {
    p: () => labelTargets("positive"),
    n: () => labelTargets("negative"),
    u: () => labelTargets(null),
    z: () => undo(),
    a: () => selectAllFiltered(),
  };
  if (event.key === "Escape" && state.selected.size) {
    state.selected.clear();
    paintAll();
    return;
  }
  const action = actions[event.key.toLowerCase()];
  if (action) {
    event.preventDefault();
    guard(action)();
  }
}

document.addEventListener("DOMContentLoaded", () => {
  for (const name of ["dragover", "drop"]) document.addEventListener(name, (event) => event.preventDefault());
  document.addEventListener("keydown", pageKey);
  for (const button of document.querySelectorAll("dialog [data-close]")) {
    button.addEventListener("click", () => button.closest("dialog").close());
  }
  $("#help-button").addEventListener("click", () => $("#help").showModal());
  dropZone($("#drop"), upload);
  dropZone($("#predict-drop"), predict);
  $("#files").addEventListener("change", (event) => guard(upload)(event.target.files).finally(() => { event.target.value = ""; }));
  $("#predict-file").addEventListener("change", (event) => guard(predict)(event.target.files));
  $("#new-tag").addEventListener("submit", (event) => {
    event.preventDefault();
    const input = $("#new-tag-name");
    guard(openTag)(input.value).then(() => { input.value = ""; });
  });
  $("#close-tag").addEventListener("click", closeTag);
  $("#tag-filter").addEventListener("input", debounce(guard(() => loadTags()), 300));
  $("#more-tags").addEventListener("click", guard(moreTags));
  $("#train").addEventListener("click", guard(train));
  $("#filters").addEventListener("submit", (event) => event.preventDefault());
  $("#filters").addEventListener("change", guard(reloadImages));
  const typed = debounce(guard(() => (state.typing ? reloadImages() : undefined)), 300);  // unless reloaded since
  $("#filters").addEventListener("input", (event) => {
    if (event.target.type !== "search") return;
    state.typing = true;
    $("#gallery").setAttribute("aria-busy", "true");  // until the search for what was typed is answered
    typed();
  });
  $("#filters").addEventListener("reset", () => setTimeout(guard(reloadImages)));
  $("#more").addEventListener("click", guard(() => loadPage("end")));
  $("#earlier").addEventListener("click", guard(() => loadPage("start")));
  $("#select-all").addEventListener("click", guard(selectAllFiltered));
  $("#select-none").addEventListener("click", () => { state.selected.clear(); paintAll(); });
  $("#label-pos").addEventListener("click", guard(() => labelTargets("positive")));
  $("#label-neg").addEventListener("click", guard(() => labelTargets("negative")));
  $("#label-none").addEventListener("click", guard(() => labelTargets(null)));
  $("#undo").addEventListener("click", guard(undo));
  $("#delete-selected").addEventListener("click", guard(() => deleteImages([...state.selected])));
  $("#threshold").addEventListener("input", guard(showThreshold));
  // Infinite scroll: the next page loads as the end of the grid comes near ("Load more" too).
  scrollObserver = new IntersectionObserver((entries) => {
    if (entries.some((e) => e.isIntersecting) && !$("#more").hidden && state.tag) guard(() => loadPage("end"))();
  }, { rootMargin: "600px" });
  scrollObserver.observe($("#sentinel"));
  new ResizeObserver(() => {  // cards scrolled to stop below the sticky toolbar, whatever its height
    document.documentElement.style.setProperty("--toolbar-height", `${$("#toolbar").offsetHeight}px`);
  }).observe($("#toolbar"));
  $("#message-close").addEventListener("click", () => say(""));
  $("#key-button").hidden = !apiKey();
  $("#key-button").addEventListener("click", guard(async () => {
    if (!askForKey()) return;
    say("");
    await loadTags();
    if (state.tag) await openTag(state.tag);
  }));
  guard(async () => {
    await loadTags();
    const last = localStorage.getItem("tagsmith.tag");
    if (last) {
      try {
        await openTag(last);
      } catch (error) {
        if (error.status === 400) localStorage.removeItem("tagsmith.tag");  // a name no tag may have: not again
        throw error;
      }
    }
  })();
});
