// Expert pages. Review: walk the adjudication queue with the keyboard, the evidence beside the
// image. Hold-out: the same viewer and class keys, answered by form post, nothing else shown.
// Region projects: each crowd annotator's regions and the consensus as toggleable overlays of
// the drawing canvas (regions.js); the expert accepts the consensus, edits it or redraws.

import { callApi } from "./api.js";
import { RegionCanvas } from "./regions.js";
import { Viewer } from "./viewer.js";

const reviewApp = document.querySelector("[data-testid=review-app]");
const holdoutApp = document.querySelector("[data-testid=holdout-app]");

function typing(event) {
  const t = event.target;
  return t instanceof HTMLTextAreaElement || (t instanceof HTMLInputElement && t.type === "text");
}

const regionConfig = document.getElementById("region-config");

if (holdoutApp) startHoldout(holdoutApp);
if (reviewApp && regionConfig) startRegionReview(reviewApp, JSON.parse(regionConfig.textContent));
else if (reviewApp) startReview(reviewApp);

// The next item not answered yet after ``index`` (wrapping round), or -1 when all are.
function nextOpen(queue, index) {
  const after = queue.findIndex((q, j) => j > index && !q.done);
  return after !== -1 ? after : queue.findIndex((q) => !q.done);
}

function startHoldout(app) {
  const img = app.querySelector("[data-testid=item-image]");
  if (!img) return;
  const viewer = new Viewer(app.querySelector("[data-testid=stage]"), img);
  viewer.show(img.dataset.src);
  const form = app.querySelector("form[data-testid=holdout-form]");
  document.addEventListener("keydown", (event) => {
    if (typing(event) || event.ctrlKey || event.metaKey || event.altKey) return;
    const button = form.querySelector(`button[data-key="${event.key}"]`);
    if (button) {
      event.preventDefault();
      button.click();
      return;
    }
    if (viewer.handleKey(event)) event.preventDefault();
  });
}

function startReview(app) {
  const $ = (id) => app.querySelector(`[data-testid=${id}]`);
  const csrf = app.dataset.csrf;
  const itemUrl = (id) => app.dataset.itemUrl.replace("/0/", `/${id}/`);
  const labelUrl = (id) => app.dataset.labelUrl.replace("/0/", `/${id}/`);
  const img = $("item-image");
  const heatmap = $("heatmap");
  const viewer = new Viewer($("stage"), img, { onChange: placeHeatmap });
  const buttons = [...app.querySelectorAll("button[data-label]")];
  const note = $("note");
  const submit = $("submit");

  let queue = []; // [{id, done, label}]
  let index = 0;
  let picked = null;
  let busy = false;
  let loadToken = 0;
  let attention = null; // the latest MIL run's attention on the shown item, if it has one
  let heatmapOn = false; // kept from item to item, like a viewer setting

  // The heatmap canvas follows the image: same size in image pixels, same transform.
  function placeHeatmap(state) {
    if (!img.naturalWidth) return;
    heatmap.style.width = `${img.naturalWidth}px`;
    heatmap.style.height = `${img.naturalHeight}px`;
    heatmap.style.transform = `translate(${state.x}px, ${state.y}px) scale(${state.scale})`;
  }

  // Each pixel gets the mean attention of the patches covering it.
  function drawHeatmap(map) {
    const f = Math.min(1, 512 / Math.max(map.width, map.height));
    const w = Math.max(1, Math.round(map.width * f));
    const h = Math.max(1, Math.round(map.height * f));
    const sum = new Float32Array(w * h);
    const count = new Float32Array(w * h);
    map.attention.forEach((row, r) =>
      row.forEach((a, c) => {
        const x0 = Math.floor(c * map.patch_stride * f);
        const y0 = Math.floor(r * map.patch_stride * f);
        const x1 = Math.min(w, Math.ceil((c * map.patch_stride + map.patch_size) * f));
        const y1 = Math.min(h, Math.ceil((r * map.patch_stride + map.patch_size) * f));
        for (let y = y0; y < y1; y++) {
          for (let x = x0; x < x1; x++) {
            sum[y * w + x] += a;
            count[y * w + x] += 1;
          }
        }
      }),
    );
    // rescaled between the least and most attended, as the run page's gallery
    let low = Infinity;
    let high = -Infinity;
    for (let i = 0; i < sum.length; i++) {
      const mean = sum[i] / (count[i] || 1);
      low = Math.min(low, mean);
      high = Math.max(high, mean);
    }
    const spread = high - low;
    heatmap.width = w;
    heatmap.height = h;
    const ctx = heatmap.getContext("2d");
    const pixels = ctx.createImageData(w, h);
    for (let i = 0; i < sum.length; i++) {
      const t = spread > 1e-12 ? (sum[i] / (count[i] || 1) - low) / spread : 0;
      // dark purple (ignored) to yellow (most attended), more opaque where it matters
      pixels.data.set([80 + 175 * t, 20 + 215 * t * t, 120 * (1 - t), 255 * (0.12 + 0.5 * t)], i * 4);
    }
    ctx.putImageData(pixels, 0, 0);
  }

  function renderHeatmap() {
    const state = $("heatmap-state");
    heatmap.hidden = !(attention && heatmapOn);
    state.hidden = !attention;
    state.textContent = heatmapOn
      ? "Attention heatmap shown (h hides it)"
      : "Attention heatmap available: press h";
    app.dataset.heatmap = attention && heatmapOn ? "shown" : attention ? "available" : "none";
    if (!heatmap.hidden) placeHeatmap(viewer.state());
  }

  async function loadAttention(ev) {
    const p = ev.prediction;
    if (!p || p.label_source !== "mil") return null;
    const url = app.dataset.attentionUrl.replace("/0/attention/0/", `/${p.run}/attention/${ev.item.id}/`);
    try {
      return await call(url);
    } catch {
      return null; // this run has no attention map for the item
    }
  }

  const say = (text, kind = "") => {
    $("status").textContent = text;
    $("status").className = `status ${kind}`;
  };

  const call = (url, options) => callApi(url, csrf, options);

  function pick(label) {
    picked = label;
    for (const b of buttons) b.classList.toggle("picked", b.dataset.label === label);
    submit.disabled = picked === null || busy || !queue.length;
  }

  function row(cells) {
    const tr = document.createElement("tr");
    for (const [text, cls] of cells) {
      const td = document.createElement("td");
      td.textContent = text;
      if (cls) td.className = cls;
      tr.append(td);
    }
    return tr;
  }

  const pct = (x) => (x === null || x === undefined ? "–" : `${Math.round(x * 100)}%`);

  function renderEvidence(ev) {
    const total = ev.vote_counts.reduce((s, v) => s + v.count, 0) || 1;
    const bars = $("vote-counts");
    bars.replaceChildren();
    for (const v of ev.vote_counts) {
      const name = document.createElement("span");
      name.textContent = v.label;
      const track = document.createElement("div");
      const bar = document.createElement("div");
      bar.className = "bar";
      bar.style.width = `${(100 * v.count) / total}%`;
      track.append(bar);
      const count = document.createElement("span");
      count.textContent = v.count;
      count.dataset.testid = `count-${v.label}`;
      bars.append(name, track, count);
    }
    $("reliability-method").textContent = ev.reliability_method
      ? `(reliability: ${ev.reliability_method})`
      : "(no aggregation yet)";
    $("voters").tBodies[0].replaceChildren(
      ...ev.voters.map((v) => row([[v.worker], [v.label], [pct(v.reliability), "num"]])),
    );
    $("consensus").tBodies[0].replaceChildren(
      ...(ev.consensus.length
        ? ev.consensus.map((c) => row([[c.method], [c.label], [pct(c.confidence), "num"]]))
        : [row([["No aggregation run yet"]])]),
    );
    $("prediction").textContent = ev.prediction
      ? `${ev.prediction.label} (${pct(Math.max(...ev.prediction.probabilities))}, ${ev.prediction.backbone}, ${ev.prediction.label_source})`
      : "No trained model yet.";
  }

  function renderPosition() {
    const left = queue.filter((q) => !q.done).length;
    const current = queue[index];
    const mark = current && current.done ? ` · done: ${current.label}` : "";
    $("position").textContent = queue.length
      ? `Item ${index + 1} of ${queue.length} · ${left} left${mark}`
      : "No item awaits review";
  }

  async function show(i) {
    if (!queue.length) {
      $("loading").hidden = true;
      img.hidden = true;
      $("empty").hidden = false;
      renderPosition();
      pick(null);
      return;
    }
    index = Math.max(0, Math.min(queue.length - 1, i));
    const entry = queue[index];
    const token = ++loadToken;
    pick(entry.done ? entry.label : null);
    note.value = entry.note || "";
    renderPosition();
    app.dataset.itemId = entry.id;
    try {
      const ev = await call(itemUrl(entry.id));
      if (token !== loadToken) return;
      renderEvidence(ev);
      attention = null;
      renderHeatmap();
      img.hidden = false;
      $("loading").hidden = true;
      const [map] = await Promise.all([loadAttention(ev), viewer.show(ev.item.image_url)]);
      if (token !== loadToken) return;
      attention = map;
      if (map) drawHeatmap(map);
      renderHeatmap();
    } catch (err) {
      if (token === loadToken) say(err.message, "bad");
    }
  }

  async function confirm() {
    if (picked === null || busy || !queue.length) return;
    const entry = queue[index];
    busy = true;
    submit.disabled = true;
    try {
      await call(labelUrl(entry.id), { method: "POST", body: { label: picked, note: note.value } });
      Object.assign(entry, { done: true, label: picked, note: note.value });
      say(`Item ${entry.id}: ${picked}`, "ok");
      note.blur();
      const following = nextOpen(queue, index);
      busy = false;
      if (following === -1) {
        renderPosition();
        pick(entry.label);
        say(`All ${queue.length} items reviewed.`, "ok");
        app.dataset.finished = "true";
        return;
      }
      await show(following);
    } catch (err) {
      say(err.message, "bad");
    } finally {
      busy = false;
      submit.disabled = picked === null || !queue.length;
    }
  }

  buttons.forEach((b) =>
    b.addEventListener("click", () => {
      pick(b.dataset.label);
      if ($("direct").checked) confirm();
    }),
  );
  submit.addEventListener("click", confirm);

  document.addEventListener("keydown", (event) => {
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    if (typing(event)) {
      if (event.key === "Escape") note.blur();
      else if (event.key === "Enter" && !event.shiftKey && event.target === note) {
        event.preventDefault();
        confirm();
      }
      return;
    }
    const key = event.key;
    const button = buttons.find((b) => b.dataset.key === key);
    let handled = true;
    if (button) {
      pick(button.dataset.label);
      if ($("direct").checked) confirm();
    } else if (key === "Enter") confirm();
    else if (key === "n" || key === "N") note.focus();
    else if (key === "h" || key === "H") {
      heatmapOn = !heatmapOn;
      if (!attention) say("The latest model has no attention map for this item.");
      renderHeatmap();
    }
    else if (key === "j" || key === "ArrowRight") show(index + 1);
    else if (key === "k" || key === "ArrowLeft") show(index - 1);
    else handled = viewer.handleKey(event);
    if (handled) event.preventDefault();
  });

  call(app.dataset.queueUrl)
    .then((page) => {
      queue = page.results.map((r) => ({ id: r.id, done: false }));
      app.dataset.ready = "true";
      return show(0);
    })
    .catch((err) => say(err.message, "bad"));
}

// --- region items ------------------------------------------------------------------------

function startRegionReview(app, config) {
  const $ = (id) => app.querySelector(`[data-testid=${id}]`);
  const csrf = app.dataset.csrf;
  const call = (url, options) => callApi(url, csrf, options);
  const itemUrl = (id) => app.dataset.itemUrl.replace("/0/", `/${id}/`);
  const regionsUrl = (id) => app.dataset.regionsUrl.replace("/0/", `/${id}/`);
  const img = $("item-image");
  const viewer = new Viewer($("stage"), img);
  const canvas = new RegionCanvas(viewer, {
    classes: config.classes,
    taskType: config.task_type,
    maxRegions: config.max_regions,
    readOnly: true,
    onChange: () => syncButtons(),
    onMessage: (text) => say(text),
  });
  canvas.mountControls({ tools: $("region-tools"), classes: $("region-classes"), actions: $("region-actions") });
  const note = $("note");
  const buttons = { accept: $("accept-consensus"), edit: $("edit-consensus"), redraw: $("redraw"), submit: $("submit-regions") };

  let queue = []; // [{id, done}]
  let index = 0;
  let evidence = null;
  let mode = "view"; // view | edit | redraw | blind
  let busy = false;
  let loadToken = 0;
  const hidden = new Set(); // layer ids the expert switched off, kept from item to item

  const say = (text, kind = "") => {
    $("status").textContent = text;
    $("status").className = `status ${kind}`;
  };
  const pct = (x) => (x === null || x === undefined ? "–" : `${Math.round(x * 100)}%`);
  // Consensus shapes carry their confidence; an answer is the shapes alone.
  const plain = (regions) => regions.map(({ confidence, ...shape }) => shape);

  function syncButtons() {
    const open = Boolean(evidence) && !busy && queue.length > 0;
    const consensus = open && Boolean(evidence.consensus);
    buttons.accept.disabled = !consensus || mode === "blind";
    buttons.edit.disabled = !consensus || mode === "blind";
    buttons.redraw.disabled = !open || mode === "blind";
    buttons.submit.disabled = !open || mode === "view";
    const drawing = mode !== "view";
    for (const area of ["region-tools", "region-classes", "region-actions"]) $(area).hidden = !drawing;
    const texts = {
      view: "Viewing the crowd's regions",
      edit: "Editing the consensus",
      redraw: "Drawing your own regions",
      blind: "Blind hold-out: draw without the crowd's regions",
    };
    $("mode").textContent = `${texts[mode]}${drawing ? ` · ${canvas.count} region${canvas.count === 1 ? "" : "s"}` : ""}`;
    $("mode").className = `mode${mode === "blind" ? " blind" : ""}`;
    app.dataset.mode = mode;
  }

  function setMode(next) {
    mode = next;
    canvas.setReadOnly(next === "view");
    if (next === "edit") canvas.load(plain(evidence.consensus.regions));
    if (next === "redraw" || next === "blind") canvas.load([]);
    // the copy being edited sits where the consensus was: its layer would only double it
    if (evidence && evidence.consensus) canvas.setLayerVisible("consensus", next === "view" && !hidden.has("consensus"));
    syncButtons();
  }

  function toggle(container, id, text, extra, checked) {
    const label = document.createElement("label");
    const box = document.createElement("input");
    box.type = "checkbox";
    box.checked = checked;
    box.dataset.testid = `layer-${id}`;
    box.addEventListener("change", () => {
      if (box.checked) hidden.delete(id);
      else hidden.add(id);
      canvas.setLayerVisible(id, box.checked && !(id === "consensus" && mode !== "view"));
      box.blur();
    });
    const name = document.createElement("span");
    name.textContent = text;
    const numbers = document.createElement("span");
    numbers.className = "num";
    numbers.textContent = extra;
    label.append(box, name, numbers);
    container.append(label);
  }

  function renderEvidence(ev) {
    $("reliability-method").textContent = ev.reliability_method ? `(${ev.reliability_method})` : "";
    const consensusBox = $("consensus-layer");
    const annotatorBox = $("annotator-layers");
    consensusBox.replaceChildren();
    annotatorBox.replaceChildren();
    if (ev.blind) {
      consensusBox.textContent = "Hidden: a blind hold-out item.";
      annotatorBox.textContent = "Hidden: a blind hold-out item.";
      return;
    }
    if (ev.consensus) {
      const c = ev.consensus;
      canvas.addLayer("consensus", plain(c.regions), { dash: [], width: 3, visible: !hidden.has("consensus") });
      toggle(consensusBox, "consensus", `${c.regions.length} region${c.regions.length === 1 ? "" : "s"}`,
        `confidence ${pct(c.confidence)} · agreement ${pct(c.agreement)}`, !hidden.has("consensus"));
    } else {
      consensusBox.textContent = "No aggregation run yet.";
    }
    ev.annotators.forEach((a, i) => {
      const id = `annotator-${i + 1}`;
      canvas.addLayer(id, a.regions, { dash: [5, 4], width: 1.5, opacity: 0.85, visible: !hidden.has(id) });
      const numbers = `${a.regions.length} · rel. ${pct(a.reliability)} · sens. ${pct(a.sensitivity)} · prec. ${pct(a.precision)}`;
      toggle(annotatorBox, id, a.worker, numbers, !hidden.has(id));
    });
    if (!ev.annotators.length) annotatorBox.textContent = "No crowd regions on this item.";
  }

  function renderPosition() {
    const left = queue.filter((q) => !q.done).length;
    const current = queue[index];
    const mark = current && current.done ? " · done" : "";
    $("position").textContent = queue.length
      ? `Item ${index + 1} of ${queue.length} · ${left} left${mark}`
      : "No item awaits review";
  }

  async function show(i) {
    evidence = null;
    if (!queue.length) {
      $("loading").hidden = true;
      img.hidden = true;
      $("empty").hidden = false;
      canvas.setImage(0, 0);
      renderPosition();
      syncButtons();
      return;
    }
    index = Math.max(0, Math.min(queue.length - 1, i));
    const entry = queue[index];
    const token = ++loadToken;
    note.value = entry.note || "";
    renderPosition();
    app.dataset.itemId = entry.id;
    delete app.dataset.ready;
    try {
      const ev = await call(itemUrl(entry.id));
      if (token !== loadToken) return;
      evidence = ev;
      canvas.setImage(ev.item.width, ev.item.height);
      renderEvidence(ev);
      setMode(ev.blind ? "blind" : "view");
      img.hidden = false;
      $("loading").hidden = true;
      await viewer.show(ev.item.image_url);
      if (token === loadToken) app.dataset.ready = "true";
    } catch (err) {
      if (token === loadToken) say(err.message, "bad");
    }
  }

  async function submit(regions) {
    if (busy || !evidence || !queue.length) return;
    const entry = queue[index];
    busy = true;
    syncButtons();
    try {
      const body = await call(regionsUrl(entry.id), { method: "POST", body: { regions, note: note.value } });
      Object.assign(entry, { done: true, note: note.value });
      say(`Item ${entry.id}: ${body.regions.length} region${body.regions.length === 1 ? "" : "s"} saved (${body.source}).`, "ok");
      note.blur();
      busy = false;
      const following = nextOpen(queue, index);
      if (following === -1) {
        renderPosition();
        say(`All ${queue.length} items reviewed.`, "ok");
        app.dataset.finished = "true";
        mode = "view";
        canvas.setReadOnly(true);
        syncButtons();
        return;
      }
      await show(following);
    } catch (err) {
      say(err.message, "bad");
    } finally {
      busy = false;
      syncButtons();
    }
  }

  buttons.accept.addEventListener("click", () => submit(plain(evidence.consensus.regions)));
  buttons.edit.addEventListener("click", () => setMode("edit"));
  buttons.redraw.addEventListener("click", () => setMode("redraw"));
  buttons.submit.addEventListener("click", () => submit(canvas.shapes()));

  document.addEventListener("keydown", (event) => {
    if (typing(event)) {
      if (event.key === "Escape") note.blur();
      return;
    }
    if ((event.ctrlKey || event.metaKey) && event.key === "Enter") {
      event.preventDefault();
      if (!buttons.submit.disabled) buttons.submit.click();
      return;
    }
    if (event.ctrlKey || event.metaKey) {
      const shortcut = { a: buttons.accept, e: buttons.edit, r: buttons.redraw }[event.key.toLowerCase()];
      if (shortcut) {
        event.preventDefault();
        if (!shortcut.disabled) shortcut.click();
        return;
      }
    }
    let handled = true;
    if (event.key === "ArrowRight" && !event.shiftKey) show(index + 1);
    else if (event.key === "ArrowLeft" && !event.shiftKey) show(index - 1);
    else handled = canvas.handleKey(event) || viewer.handleKey(event);
    if (handled) event.preventDefault();
  });

  call(app.dataset.queueUrl)
    .then((page) => {
      queue = page.results.map((r) => ({ id: r.id, done: false }));
      return show(0);
    })
    .catch((err) => say(err.message, "bad"));
}
