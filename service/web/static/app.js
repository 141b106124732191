// The sanity-check page: plain JS, no build step. The server's JSON API is /docs.
"use strict";

const PAGE_SIZE = 40;
const RETRY_MS = 2000; // while the service or the verdict store is away
const PENDING_KEY = "sanity.pending"; // verdicts not yet acknowledged, kept across reloads

const state = {
  models: [], model: null, topK: 5,
  sessionId: newSessionId(), clicks: [], rec: null,
  query: "", offset: 0, total: 0,
  verdicts: new Map(), // "recId|item" -> {sensible, saved}
  pending: new Map(loadPending()), // "recId|item" -> verdict body, until acknowledged
  retryRecommend: null, retryItems: null, retryVerdicts: null,
};

const $ = (id) => document.getElementById(id);

function newSessionId() {
  const hex = Array.from(crypto.getRandomValues(new Uint8Array(8)),
    (b) => b.toString(16).padStart(2, "0")).join("");
  return "web-" + hex;
}

function loadPending() {
  try { return JSON.parse(localStorage.getItem(PENDING_KEY) || "[]"); } catch { return []; }
}
function storePending() {
  try { localStorage.setItem(PENDING_KEY, JSON.stringify([...state.pending])); } catch { /* full */ }
}

// --- talking to the server: JSON in, JSON out, errors as {status, detail} ---

async function api(path, body) {
  const init = body === undefined ? {} : {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  };
  let response;
  try {
    response = await fetch(path, init);
  } catch {
    throw { status: 0, detail: "The page cannot reach its web server. Is `python -m service.web` running? Retrying." };
  }
  let data = null;
  try { data = await response.json(); } catch { /* not JSON */ }
  if (!response.ok) {
    const detail = (data && data.detail) || `The server answered ${response.status}.`;
    throw { status: response.status, code: data && data.code, detail };
  }
  return data;
}

function showMessage(text, kind) {
  const box = $("message");
  box.textContent = text;
  box.className = kind || "";
  box.hidden = false;
}
function clearMessage() { $("message").hidden = true; $("message").textContent = ""; }

const retryable = (err) => err.status === 0 || err.status >= 500;

// --- models ---

async function loadModels() {
  const data = await api("/api/models");
  state.topK = data.top_k;
  state.models = data.models;
  if (!state.model) state.model = data.models[0].key;
  const select = $("model");
  select.replaceChildren(...data.models.map((m) => {
    const option = new Option(`${m.model_version || "(not answering)"} — ${m.target}`, m.key);
    option.selected = m.key === state.model;
    return option;
  }));
  $("model-choice").hidden = data.models.length < 2;
  showVersion();
}

function showVersion() {
  const current = state.models.find((m) => m.key === state.model);
  const version = (state.rec && state.rec.model_version) || (current && current.model_version);
  $("version").textContent = version ? `model ${version}` : "model: not answering";
}

// --- the item grid ---

async function loadItems() {
  clearTimeout(state.retryItems);
  const params = new URLSearchParams({ q: state.query, offset: state.offset, limit: PAGE_SIZE });
  if (state.model) params.set("model", state.model);
  try {
    const page = await api(`/api/items?${params}`);
    state.total = page.total;
    renderGrid(page.items);
  } catch (err) {
    showMessage(err.detail);
    if (retryable(err)) state.retryItems = setTimeout(loadItems, RETRY_MS);
  }
}

function picture(item, size) {
  const img = document.createElement("img");
  img.src = `/api/image?item=${encodeURIComponent(item)}`;
  img.alt = "";
  img.width = img.height = size;
  return img;
}

function renderGrid(items) {
  const cells = items.map((item) => {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "item";
    button.dataset.item = item;
    button.title = `click ${item}`;
    const label = document.createElement("span");
    label.textContent = item;
    button.append(picture(item, 64), label);
    button.addEventListener("click", () => clickItem(item));
    return button;
  });
  $("grid").replaceChildren(...cells);
  if (!items.length) $("grid").textContent = "No item id contains that text.";
  const pages = Math.max(1, Math.ceil(state.total / PAGE_SIZE));
  const page = Math.floor(state.offset / PAGE_SIZE) + 1;
  $("page-info").textContent = `page ${page} of ${pages} · ${state.total.toLocaleString()} items`;
  $("prev").disabled = state.offset === 0;
  $("next").disabled = state.offset + PAGE_SIZE >= state.total;
}

function turnPage(step) {
  const next = state.offset + step * PAGE_SIZE;
  if (next < 0 || next >= state.total) return;
  state.offset = next;
  loadItems();
}

// --- the session and its recommendations ---

function clickItem(item) {
  state.clicks.push(item);
  renderClicks();
  recommend(true);
}

async function recommend(freshClick) {
  clearTimeout(state.retryRecommend);
  if (!state.clicks.length) return;
  const body = {
    session_id: state.sessionId, clicks: state.clicks, top_k: state.topK,
    bottom_k: state.topK, model: state.model,
  };
  const sent = state.clicks.length;
  try {
    const rec = await api("/api/recommend", body);
    if (sent !== state.clicks.length) return; // a newer click's answer is on its way
    state.rec = rec;
    if (!freshClick) loadModels().catch(() => {}); // back after a fault: refresh the versions
    clearMessage();
    renderRecs();
    showVersion();
  } catch (err) {
    if (sent !== state.clicks.length) return;
    if (retryable(err)) {
      showMessage(`${err.detail} Retrying every ${RETRY_MS / 1000} s…`);
      state.retryRecommend = setTimeout(() => recommend(false), RETRY_MS);
      return;
    }
    if (freshClick && err.status === 400) { // the click was not accepted: leave it out
      state.clicks.pop();
      renderClicks();
    }
    showMessage(err.detail);
  }
}

function renderClicks() {
  const list = $("clicks");
  if (!state.clicks.length) {
    const empty = document.createElement("li");
    empty.className = "empty";
    empty.textContent = "No clicks yet: click an item.";
    list.replaceChildren(empty);
  } else {
    list.replaceChildren(...state.clicks.map((item) => {
      const li = document.createElement("li");
      li.append(picture(item, 20), item);
      return li;
    }));
  }
  $("session-id").textContent = `${state.sessionId} · ${state.clicks.length} clicks`;
}

function renderRecs() {
  const rec = state.rec;
  for (const [name, items] of [["best", rec ? rec.items : []], ["worst", rec ? rec.bottom_items : []]]) {
    $(name).replaceChildren(...items.map((it, i) => recRow(rec, name, i + 1, it)));
  }
  $("session").dataset.recommendationId = rec ? rec.recommendation_id : "";
  $("rec-info").textContent = rec
    ? `recommendation ${rec.recommendation_id} · ranked by ${rec.source}` +
      (rec.skipped_clicks ? ` · ${rec.skipped_clicks} old clicks skipped` : "")
    : "";
}

function recRow(rec, list, rank, it) {
  const li = document.createElement("li");
  li.className = "rec";
  li.tabIndex = 0;
  Object.assign(li.dataset, { item: it.item_id, list, rank });
  const text = document.createElement("div");
  const id = document.createElement("div");
  id.className = "id";
  id.textContent = `${rank}. ${it.item_id}`;
  const meta = document.createElement("div");
  meta.className = "meta";
  const badge = document.createElement("span");
  badge.className = `badge ${it.source}`;
  badge.textContent = it.source;
  meta.append(`score ${it.score.toPrecision(4)} `, badge);
  text.append(id, meta);
  const verdict = document.createElement("div");
  verdict.className = "verdict";
  const yes = verdictButton("✓ sensible", "yes", () => mark(li, true));
  const no = verdictButton("✗ not", "no", () => mark(li, false));
  const saved = document.createElement("span");
  saved.className = "saved";
  verdict.append(yes, " ", no, saved);
  li.append(picture(it.item_id, 40), text, verdict);
  li.addEventListener("dblclick", () => clickItem(it.item_id));
  showVerdict(li);
  return li;
}

function verdictButton(label, kind, onClick) {
  const button = document.createElement("button");
  button.type = "button";
  button.className = kind;
  button.textContent = label;
  button.setAttribute("aria-pressed", "false");
  button.addEventListener("click", onClick);
  return button;
}

function verdictKey(li) { return `${state.rec.recommendation_id}|${li.dataset.item}`; }

function showVerdict(li) {
  const known = state.verdicts.get(verdictKey(li));
  li.querySelector(".yes").setAttribute("aria-pressed", String(!!known && known.sensible));
  li.querySelector(".no").setAttribute("aria-pressed", String(!!known && !known.sensible));
  li.dataset.saved = known ? (known.saved ? "yes" : "pending") : "";
  li.querySelector(".saved").textContent = known ? (known.saved ? "saved" : "saving…") : "";
}

// --- verdicts: kept until the server says they are on disk ---

function mark(li, sensible) {
  const rec = state.rec;
  const items = li.dataset.list === "best" ? rec.items : rec.bottom_items;
  const it = items[Number(li.dataset.rank) - 1];
  const key = verdictKey(li);
  state.pending.set(key, {
    recommendation_id: rec.recommendation_id, item_id: it.item_id, sensible,
    shown_in: li.dataset.list, rank: Number(li.dataset.rank), score: it.score, source: it.source,
    model_version: rec.model_version, session_id: state.sessionId, clicks: state.clicks.slice(),
  });
  state.verdicts.set(key, { sensible, saved: false });
  storePending();
  showVerdict(li);
  sendVerdicts();
}

async function sendVerdicts() {
  clearTimeout(state.retryVerdicts);
  for (const [key, body] of [...state.pending]) {
    try {
      await api("/api/feedback", body);
    } catch (err) {
      if (!retryable(err)) { // the server will never take it: say so, do not retry
        state.pending.delete(key);
        state.verdicts.delete(key);
        storePending();
        document.querySelectorAll(".rec").forEach(showVerdict);
        showMessage(`Verdict on ${body.item_id} rejected: ${err.detail}`);
        continue;
      }
      showMessage(`${err.detail} (${state.pending.size} verdict(s) waiting; retrying every ${RETRY_MS / 1000} s)`);
      state.retryVerdicts = setTimeout(sendVerdicts, RETRY_MS);
      return;
    }
    if (state.pending.get(key) === body) state.pending.delete(key); // not re-marked meanwhile
    const known = state.verdicts.get(key);
    if (known && known.sensible === body.sensible) known.saved = true;
    storePending();
    document.querySelectorAll(".rec").forEach(showVerdict);
  }
  if ($("message").textContent.includes("verdict")) clearMessage();
  loadSummary();
}

async function loadSummary() {
  let rows;
  try { rows = await api("/api/feedback/summary"); } catch { return; }
  const pct = (x) => (x === null ? "–" : `${Math.round(x * 100)}%`);
  $("summary").tBodies[0].replaceChildren(...rows.map((r) => {
    const tr = document.createElement("tr");
    for (const cell of [r.model_version, r.verdicts, pct(r.share_sensible),
      `${pct(r.best_share_sensible)} of ${r.best_verdicts}`,
      `${pct(r.worst_share_sensible)} of ${r.worst_verdicts}`]) {
      const td = document.createElement("td");
      td.textContent = cell;
      tr.append(td);
    }
    return tr;
  }));
}

// --- session reset, model switch, search ---

function resetSession() {
  clearTimeout(state.retryRecommend);
  state.sessionId = newSessionId();
  state.clicks = [];
  state.rec = null;
  renderClicks();
  renderRecs();
  clearMessage();
  showVersion();
}

let searchTimer = null;
function onSearch() {
  clearTimeout(searchTimer);
  searchTimer = setTimeout(() => {
    state.query = $("search").value;
    state.offset = 0;
    loadItems();
  }, 150);
}

// --- keyboard ---

function moveFocus(event) {
  const el = document.activeElement;
  if (el && el.classList.contains("item")) {
    const cells = [...$("grid").children];
    const i = cells.indexOf(el);
    const columns = cells.filter((c) => c.offsetTop === cells[0].offsetTop).length || 1;
    const step = { ArrowLeft: -1, ArrowRight: 1, ArrowUp: -columns, ArrowDown: columns }[event.key];
    const target = cells[i + step];
    if (target) { target.focus(); event.preventDefault(); }
  } else if (el && el.classList.contains("rec")) {
    const rows = [...document.querySelectorAll(".rec")];
    const step = { ArrowUp: -1, ArrowDown: 1 }[event.key];
    const target = step && rows[rows.indexOf(el) + step];
    if (target) { target.focus(); event.preventDefault(); }
  }
}

function onKey(event) {
  if (event.ctrlKey || event.metaKey || event.altKey) return;
  const typing = event.target.matches("input, select, textarea");
  if (typing) {
    if (event.key === "Escape") event.target.blur();
    if (event.key === "ArrowDown" && event.target.id === "search") {
      const first = $("grid").querySelector(".item");
      if (first) { first.focus(); event.preventDefault(); }
    }
    return;
  }
  const rec = document.activeElement && document.activeElement.closest(".rec");
  switch (event.key) {
    case "/": $("search").focus(); event.preventDefault(); break;
    case "r": resetSession(); break;
    case "[": turnPage(-1); break;
    case "]": turnPage(1); break;
    case "y": if (rec) mark(rec, true); break;
    case "n": if (rec) mark(rec, false); break;
    default: if (event.key.startsWith("Arrow")) moveFocus(event);
  }
}

// --- start ---

async function start() {
  $("reset").addEventListener("click", resetSession);
  $("prev").addEventListener("click", () => turnPage(-1));
  $("next").addEventListener("click", () => turnPage(1));
  $("search").addEventListener("input", onSearch);
  $("model").addEventListener("change", (e) => {
    state.model = e.target.value;
    state.offset = 0;
    loadItems();
    recommend(false);
  });
  document.addEventListener("keydown", onKey);
  renderClicks();
  try {
    await loadModels();
  } catch (err) {
    showMessage(err.detail);
  }
  if (state.models.length && !state.models.some((m) => m.up)) {
    showMessage(state.models[0].message + " Retrying…");
  }
  loadItems();
  loadSummary();
  if (state.pending.size) sendVerdicts();
}

start();
