// The annotator page: show one leased item, answer by key, prefetch the next.
//
// Two leases are live at most: the item shown and the one prefetched behind it (its image
// already decoded), so a keypress swaps images at once while the vote is posted.
//
// Region projects (points, boxes, masks) draw on the item instead (regions.js) and submit the
// whole set as one vote; no lease is prefetched there, since drawing takes longer than a lease
// should be held idle. A gold item's feedback (score, the expert's regions) stays on screen
// until the worker moves on.

import { ApiError, callApi } from "./api.js";
import { RegionCanvas } from "./regions.js";
import { Viewer } from "./viewer.js";

const app = document.querySelector("[data-testid=label-app]");
const $ = (id) => app.querySelector(`[data-testid=${id}]`);
const nextUrl = app.dataset.nextUrl;
const csrf = app.dataset.csrf;

const img = $("item-image");
const viewer = new Viewer($("stage"), img, { onChange: syncSliders });
const classKeys = new Map(
  [...app.querySelectorAll("button[data-label]")].map((b) => [b.dataset.key, b.dataset.label]),
);

let current = null; // the assignment on screen
let upcoming = Promise.resolve(null); // the prefetched assignment behind it
let lastAnswered = null; // the assignment of the last vote, for undo
let chain = Promise.resolve(); // answers and undos run one after another, none is lost
let stopped = false;
let bannerTimer = null;

const regionConfig = document.getElementById("region-config");
const regions = regionConfig ? makeRegions(JSON.parse(regionConfig.textContent)) : null;
let busy = false; // a region vote is on its way
let goldReview = false; // a gold item's feedback is shown; Next moves on

// every request of this page carries its CSRF token
const call = (url, options) => callApi(url, csrf, options);

function preload(url) {
  const image = new Image();
  image.src = url;
  return image.decode().catch(() => {});
}

async function fetchNext(exclude = []) {
  const query = exclude.map((id) => `exclude=${id}`).join("&");
  const assignment = await call(query ? `${nextUrl}?${query}` : nextUrl);
  if (assignment) {
    viewer.prefetch(assignment.item.image_url);
    await preload(assignment.item.image_url);
  }
  return assignment;
}

function prefetch() {
  if (regions) return;
  upcoming = current ? fetchNext([current.id]).catch(() => null) : Promise.resolve(null);
}

function newKey() {
  if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
  return `${Date.now()}-${Math.random().toString(36).slice(2)}`;
}

function setStatus(text, tone = "error") {
  const status = $("status");
  status.textContent = text || "";
  status.className = `status ${tone}`;
}

function setProgress(progress) {
  if (!progress) return;
  const votes = progress.votes_today === 1 ? "vote" : "votes";
  const items = progress.items_left === 1 ? "item" : "items";
  $("progress").textContent =
    `${progress.votes_today} ${votes} today · ${progress.items_left} ${items} left`;
}

function showFeedback(feedback) {
  const banner = $("feedback");
  clearTimeout(bannerTimer);
  if (!feedback) {
    banner.hidden = true;
    return;
  }
  banner.textContent = feedback.correct
    ? "Gold question: you matched the expert."
    : `Gold question: the expert said ${feedback.expert_label}.`;
  banner.className = `banner ${feedback.correct ? "ok" : "bad"}`;
  banner.hidden = false;
  bannerTimer = setTimeout(() => (banner.hidden = true), 5000);
}

// The worker's own gold score: a warning stays on screen while it holds (gold questions only).
function showStanding(standing) {
  if (!standing) return;
  const note = $("standing");
  note.textContent = standing.status === "warning" ? standing.message : "";
  note.hidden = standing.status !== "warning";
}

function setButtons(enabled) {
  for (const button of app.querySelectorAll(".answers button, .secondary button")) {
    button.disabled = !enabled;
  }
  if (regions) syncRegionButtons();
}

async function render() {
  $("loading").hidden = true;
  $("done").hidden = Boolean(current);
  img.hidden = !current;
  setButtons(Boolean(current));
  if (!current) {
    viewer.clear();
    if (regions) regions.setImage(0, 0);
    delete app.dataset.assignment;
    return;
  }
  app.dataset.assignment = current.id;
  img.dataset.item = current.item.id;
  if (regions) {
    goldReview = false;
    regions.setReadOnly(false);
    regions.setImage(current.item.width, current.item.height);
    syncRegionButtons();
  }
  await viewer.show(current.item.image_url);
}

function stop(error) {
  stopped = true;
  current = null;
  render();
  $("done").hidden = true;
  setButtons(false);
  setStatus(error.message);
  if (error.status === 403) {
    // Blocked (or no longer a labeller here): say so where the image was.
    $("blocked").textContent = error.message;
    $("blocked").hidden = false;
    $("standing").hidden = true;
  }
}

async function answer(kind, label) {
  if (!current || stopped) return;
  const answered = current;
  // Swap to the prefetched item before the vote is even sent.
  current = await upcoming;
  upcoming = Promise.resolve(null);
  render();
  const body = { kind, idempotency_key: newKey() };
  if (label) body.label = label;
  try {
    const result = await postVote(answered.id, body);
    lastAnswered = answered;
    showFeedback(result.feedback);
    setProgress(result.progress);
    const standing = result.feedback && result.feedback.standing;
    showStanding(standing);
    // This answer blocked the worker: stop now rather than show the item prefetched before.
    if (standing && standing.status === "blocked") return stop(new ApiError(403, standing.message));
    setStatus("");
  } catch (error) {
    if (error.status === 403) return stop(error);
    setStatus(error.message);
  }
  // Only now: before the vote lands the server would hand back the answered lease.
  if (!current) {
    current = await fetchNext().catch(() => null);
    render();
  }
  prefetch();
}

async function postVote(assignmentId, body) {
  const url = `/api/assignments/${assignmentId}/vote/`;
  for (let attempt = 0; ; attempt++) {
    try {
      return await call(url, { method: "POST", body });
    } catch (error) {
      // A lost connection is retried with the same key: the server answers it once.
      if (error instanceof ApiError || attempt >= 2) throw error;
      await new Promise((resolve) => setTimeout(resolve, 400 * (attempt + 1)));
    }
  }
}

async function undo() {
  if (!lastAnswered || stopped) {
    setStatus("Nothing to undo.", "info");
    return;
  }
  try {
    const reopened = await call(`/api/assignments/${lastAnswered.id}/undo/`, { method: "POST" });
    lastAnswered = null;
    // The item shown goes back in line behind the one reopened.
    const shown = current;
    current = reopened;
    upcoming = shown ? Promise.resolve(shown) : Promise.resolve(null);
    if (!shown) prefetch();
    showFeedback(null);
    setProgress(reopened.progress);
    setStatus("Your last answer was taken back.", "info");
    await render();
  } catch (error) {
    setStatus(error.message);
  }
}

function enqueue(task) {
  chain = chain.then(task).catch((error) => setStatus(error.message));
}

// The window sliders span the item's values; preset buttons only for CT (Hounsfield units).
function syncSliders(state) {
  const [low, high] = state.range;
  const span = Math.max(1, high - low + 1);
  const width = $("window-width");
  const center = $("window-center");
  width.min = 1;
  width.max = Math.max(span * 2, state.width);
  center.min = Math.min(low, state.center);
  center.max = Math.max(high, state.center);
  width.step = center.step = span > 64 ? 1 : "any";
  width.value = state.width;
  center.value = state.center;
  const unit = state.unit ? ` ${state.unit}` : "";
  $("window-width-value").textContent = `${Math.round(state.width)}${unit}`;
  $("window-center-value").textContent = `${Math.round(state.center)}${unit}`;
  const presets = $("presets");
  presets.hidden = state.unit !== "HU";
  if (!presets.childElementCount) {
    for (const p of viewer.presets) {
      const button = document.createElement("button");
      button.type = "button";
      button.dataset.preset = p.key;
      button.dataset.testid = `preset-${p.key}`;
      button.title = `${p.name}: W ${p.width} / C ${p.center} HU (${p.shortcut.toUpperCase()})`;
      button.innerHTML = `<kbd></kbd> `;
      button.firstChild.textContent = p.shortcut.toUpperCase();
      button.append(p.name);
      presets.append(button);
    }
  }
  for (const button of presets.children) button.classList.toggle("on", button.dataset.preset === state.preset);
}

document.addEventListener("keydown", (event) => {
  if (event.target instanceof HTMLInputElement && event.target.type !== "range") return;
  if (regions) {
    if (regionKey(event)) event.preventDefault();
    return;
  }
  if (event.ctrlKey || event.metaKey || event.altKey) return;
  const key = event.key;
  let handled = true;
  if (classKeys.has(key)) enqueue(() => answer("label", classKeys.get(key)));
  else if (key === "0") enqueue(() => answer("unsure"));
  else if (key === "s" || key === "S") enqueue(() => answer("skip"));
  else if (key === "z" || key === "Z") enqueue(undo);
  else handled = viewer.handleKey(event);
  if (handled) event.preventDefault();
});

app.addEventListener("click", (event) => {
  const button = event.target.closest("button");
  if (!button) return;
  if (button.dataset.region) regionAction(button.dataset.region);
  else if (button.dataset.label) enqueue(() => answer("label", button.dataset.label));
  else if (button.dataset.kind) enqueue(() => answer(button.dataset.kind));
  else if (button.dataset.action === "undo") enqueue(undo);
  else if (button.dataset.action === "zoom-in") viewer.zoomBy(1.25);
  else if (button.dataset.action === "zoom-out") viewer.zoomBy(0.8);
  else if (button.dataset.action === "reset") viewer.reset();
  else if (button.dataset.action === "invert") viewer.toggleInvert();
  else if (button.dataset.preset) viewer.applyPreset(button.dataset.preset);
  // Keys keep working after a click: focus must not stay on a button that Space would press.
  button.blur();
});

for (const id of ["window-width", "window-center"]) {
  $(id).addEventListener("input", () =>
    viewer.setWindow(Number($("window-center").value), Number($("window-width").value)),
  );
}

// --- region projects ---------------------------------------------------------------------

function makeRegions(config) {
  const canvas = new RegionCanvas(viewer, {
    classes: config.classes,
    taskType: config.task_type,
    maxRegions: config.max_regions,
    onChange: syncRegionButtons,
    onMessage: (text) => setStatus(text, "info"),
  });
  canvas.mountControls({ tools: $("region-tools"), classes: $("region-classes"), actions: $("region-actions") });
  return canvas;
}

// Submit needs at least one region; "Nothing here" is the explicit empty answer.
function syncRegionButtons() {
  const open = Boolean(current) && !stopped && !busy;
  const drawing = open && !goldReview;
  const n = regions.count;
  $("submit-regions").disabled = !drawing || n === 0;
  $("nothing-here").disabled = !drawing || n > 0;
  $("skip-regions").disabled = !drawing;
  $("next-item").hidden = !goldReview;
  $("region-count").textContent = current ? `${n} ${n === 1 ? "region" : "regions"}` : "";
}

function regionKey(event) {
  const key = event.key;
  if (goldReview) {
    if (key === "Enter" || key === "n" || key === "N") {
      enqueue(nextAfterGold);
      return true;
    }
    return viewer.handleKey(event);
  }
  if (key === "Enter" && (event.ctrlKey || event.metaKey)) {
    enqueue(() => submitRegions(regions.count ? "submit" : "nothing"));
    return true;
  }
  if (regions.handleKey(event)) return true;
  if (event.ctrlKey || event.metaKey || event.altKey) return false;
  if (key === "s" || key === "S") {
    enqueue(() => submitRegions("skip"));
    return true;
  }
  if (key === "f" || key === "F") {
    toggleFullscreen();
    return true;
  }
  return viewer.handleKey(event);
}

function regionAction(action) {
  if (action === "submit" || action === "nothing" || action === "skip") enqueue(() => submitRegions(action));
  else if (action === "next") enqueue(nextAfterGold);
  else if (action === "fullscreen") toggleFullscreen();
}

function toggleFullscreen() {
  if (document.fullscreenElement) document.exitFullscreen();
  else app.requestFullscreen?.().catch(() => {});
}

async function submitRegions(action) {
  if (!current || stopped || busy || goldReview) return;
  if (action === "submit" && !regions.count) return;
  if (action === "nothing" && regions.count) return;
  const body =
    action === "skip"
      ? { kind: "skip" }
      : { kind: "regions", regions: action === "nothing" ? [] : regions.shapes() };
  body.idempotency_key = newKey();
  busy = true;
  syncRegionButtons();
  setStatus("Sending…", "info");
  try {
    const result = await postVote(current.id, body);
    lastAnswered = current;
    setProgress(result.progress);
    const feedback = result.feedback;
    const standing = feedback && feedback.standing;
    showStanding(standing);
    setStatus("");
    if (standing && standing.status === "blocked") return stop(new ApiError(403, standing.message));
    if (feedback && feedback.gold) return showRegionFeedback(feedback);
    regions.setReadOnly(true); // answered: nothing more is drawn on it while the next one loads
  } catch (error) {
    if (error.status === 403) return stop(error);
    if (error.status !== 404 && error.status !== 409) {
      // The drawing stays: the worker fixes what the message names and submits again.
      setStatus(error.message);
      return;
    }
    // The lease is gone (expired and the item full, or answered elsewhere): nothing to fix.
    setStatus(`${error.message} On to the next item.`, "info");
  } finally {
    busy = false;
    syncRegionButtons();
  }
  await advance();
}

const METRIC_NAMES = { f1: "F1", dice: "Dice" };

// A gold item answered: the score, and the expert's regions over the worker's own.
function showRegionFeedback(feedback) {
  goldReview = true;
  regions.setReadOnly(true);
  regions.addLayer("expert", feedback.expert_regions || [], { dash: [7, 4], color: "#ffffff", width: 2.5 });
  const banner = $("feedback");
  clearTimeout(bannerTimer);
  const metric = METRIC_NAMES[feedback.metric] || feedback.metric;
  const score = Number(feedback.score).toFixed(2);
  const good = feedback.score >= 0.5;
  banner.textContent =
    `Gold question: your ${metric} is ${score} against the expert` +
    `${good ? "" : " (under 0.50 counts as a miss)"}. The expert's regions are dashed white.`;
  banner.className = `banner ${good ? "ok" : "bad"}`;
  banner.dataset.score = String(feedback.score);
  banner.hidden = false;
  syncRegionButtons();
  $("next-item").focus();
}

async function nextAfterGold() {
  if (!goldReview) return;
  goldReview = false;
  showFeedback(null);
  await advance();
}

async function advance() {
  current = await fetchNext().catch((error) => {
    if (error.status === 403) stop(error);
    return null;
  });
  if (stopped) return;
  await render();
}

async function start() {
  try {
    current = await fetchNext();
    if (current) setProgress(current.progress);
    await render();
    app.dataset.ready = "true";
    prefetch();
  } catch (error) {
    stop(error);
    app.dataset.ready = "true";
  }
}

start();
