// Launch form: show the training items of the chosen label source and estimate the run's time
// as the fields change (the basis, measured rates per backbone on the workers' device, comes
// from the server; the model is training.devices.estimate_seconds).
// Run page: poll GET /api/training-runs/<id>/ every 2 s while the run is unfinished, move the
// progress bar, draw loss and hold-out accuracy as small SVG line charts, cancel and resume.
(function () {
  "use strict";

  function duration(seconds) {
    if (seconds < 90) return `${Math.max(1, Math.round(seconds / 5) * 5)} s`;
    const minutes = Math.round(seconds / 60);
    if (minutes < 90) return `${minutes} min`;
    return `${Math.floor(minutes / 60)} h ${minutes % 60} min`;
  }

  function launchPlan() {
    const form = document.getElementById("launch-form");
    const data = document.getElementById("estimate-basis");
    if (!form || !data) return;
    const basis = JSON.parse(data.textContent);
    const device = basis.device.toUpperCase();
    const nTrainOut = form.querySelector("[data-testid=n-train]");
    const valueOut = form.querySelector("[data-testid=estimate-value]");
    const noteOut = form.querySelector("[data-testid=estimate-basis]");
    function update() {
      const nTrain = basis.n_train[form.elements.label_source.value] || 0;
      nTrainOut.textContent = nTrain.toLocaleString("en");
      const size = Number(form.elements.image_size.value);
      const epochs = Number(form.elements.epochs.value);
      const backbone = form.elements.backbone.value.trim().split(".")[0];
      if (!(size > 0 && epochs > 0) || !nTrain) {
        valueOut.textContent = "–";
        noteOut.textContent = nTrain ? "" : "(no training item has this kind of label yet)";
        return;
      }
      const measured = basis.rates[backbone];
      const rate = measured === undefined ? basis.default_rate : measured;
      const items = nTrain + basis.holdout_cost * basis.n_holdout;
      // auto first trains each candidate crowd model for a few epochs (training.crowd_models);
      // crossfit_em trains a classifier per fold and EM round on the other folds' items
      // (training.crossfit_runs), at most its round limit
      const source = form.elements.label_source.value;
      const fit = basis.crossfit_em;
      const foldEpochs = Math.min(epochs, fit.epochs);
      let extra = 0;
      let includes = "";
      if (source === "auto") {
        extra = basis.auto.candidates * Math.min(epochs, basis.auto.epochs);
        includes = `; includes ${basis.auto.candidates} candidate runs of ${Math.min(epochs, basis.auto.epochs)} epoch(s) when there are enough validation items`;
      } else if (source === "crossfit_em") {
        extra = fit.rounds * fit.folds * foldEpochs * (fit.folds - 1) / fit.folds;
        includes = `; includes up to ${fit.rounds} EM rounds of ${fit.folds} fold classifiers (${foldEpochs} epoch(s) each)`;
      }
      const seconds = basis.startup_seconds + (epochs + extra) * items * (basis.item_overhead + rate * size * size);
      valueOut.textContent = `${extra ? "at most" : "about"} ${duration(seconds)}`;
      noteOut.textContent = (measured === undefined
        ? `on ${device}; a rough default, no ${backbone} run measured there yet`
        : `on ${device}, from the last ${backbone} run measured there`) + includes;
    }
    form.addEventListener("input", update);
    form.addEventListener("change", update);
    update();
  }
  launchPlan();

  const root = document.getElementById("run");
  if (!root) return;
  const api = root.dataset.runApi;
  const finishedAtLoad = root.dataset.finished === "true";
  const statusAtLoad = root.dataset.status;
  const POLL_MS = 2000;
  const SVG_NS = "http://www.w3.org/2000/svg";

  function csrfToken() {
    const input = root.querySelector("input[name=csrfmiddlewaretoken]");
    return input ? input.value : "";
  }

  function el(name, attrs, text) {
    const node = document.createElementNS(SVG_NS, name);
    for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // The site's palette (quorum.css), the one the dashboard's and the report's charts use.
  function siteColor(name) {
    return getComputedStyle(document.documentElement).getPropertyValue(`--${name}`).trim();
  }

  // series: [{name, color, points: [[epoch, value|null], ...]}]; x runs over 1..epochs
  function lineChart(container, series, epochs, yMin, yMax) {
    const width = 460, height = 236, left = 44, right = 12, top = 28, bottom = 30;
    const x = (e) => left + (epochs > 1 ? (e - 1) / (epochs - 1) : 0.5) * (width - left - right);
    const y = (v) => top + (1 - (v - yMin) / (yMax - yMin || 1)) * (height - top - bottom);
    const svg = el("svg", { viewBox: `0 0 ${width} ${height}`, width, height, role: "img" });
    for (let i = 0; i <= 4; i++) {
      const value = yMin + ((yMax - yMin) * i) / 4;
      svg.append(el("line", { x1: left, x2: width - right, y1: y(value), y2: y(value), stroke: siteColor("grid") }));
      svg.append(el("text", { x: left - 6, y: y(value) + 4, "text-anchor": "end" }, value.toFixed(2)));
    }
    const step = Math.max(1, Math.ceil(epochs / 10));
    for (let e = 1; e <= epochs; e += step) {
      svg.append(el("text", { x: x(e), y: height - bottom + 16, "text-anchor": "middle" }, String(e)));
    }
    svg.append(el("text", { x: (left + width - right) / 2, y: height - 2, "text-anchor": "middle" }, "epoch"));
    series.forEach((s, index) => {
      const points = s.points.filter((p) => p[1] !== null && Number.isFinite(p[1]));
      if (points.length > 1) {
        svg.append(el("polyline", {
          points: points.map((p) => `${x(p[0])},${y(p[1])}`).join(" "),
          fill: "none", stroke: s.color, "stroke-width": 2,
        }));
      }
      points.forEach((p) => svg.append(el("circle", { cx: x(p[0]), cy: y(p[1]), r: 3.5, fill: s.color })));
      const lx = left + 8 + index * 110;
      // the legend sits above the plot area so it never hides a point
      svg.append(el("rect", { x: lx, y: 4, width: 10, height: 10, fill: s.color }));
      svg.append(el("text", { x: lx + 14, y: 13 }, s.name));
    });
    container.replaceChildren(svg);
  }

  function drawCurves(run) {
    const rows = run.epoch_metrics || [];
    if (!rows.length) return;
    const epochs = Math.max(run.epochs, rows[rows.length - 1].epoch);
    const losses = rows.flatMap((r) => [r.train_loss, r.holdout_loss]).filter((v) => v !== null);
    lineChart(document.getElementById("loss-chart"), [
      { name: "train", color: siteColor("accent"), points: rows.map((r) => [r.epoch, r.train_loss]) },
      { name: "hold-out", color: siteColor("second"), points: rows.map((r) => [r.epoch, r.holdout_loss]) },
    ], epochs, 0, Math.max(...losses) * 1.1 || 1);
    lineChart(document.getElementById("accuracy-chart"), [
      { name: "hold-out", color: siteColor("ok"), points: rows.map((r) => [r.epoch, r.holdout_accuracy]) },
    ], epochs, 0, 1);
  }

  // the same sentences as run.html's list of interruptions
  function renderInterruptions(rows) {
    const list = root.querySelector("[data-testid=interruptions]");
    if (!list) return;
    const time = (iso) => `${new Date(iso).toISOString().replace("T", " ").slice(0, 19)} UTC`;
    list.replaceChildren(...rows.map((i) => {
      let text = `Interrupted at epoch ${i.epoch}: ${i.worker} stopped (last sign of life ${time(i.at)})`;
      if (i.resumed_at) {
        const from = i.resumed_from_epoch ? `from the checkpoint of epoch ${i.resumed_from_epoch}`
          : i.resumed_from_epoch === 0 ? "from the start (no checkpoint)" : "from its checkpoint";
        text += `; resumed ${from} on ${i.resumed_by} at ${time(i.resumed_at)}`;
      } else {
        text += "; not resumed";
      }
      const item = document.createElement("li");
      item.textContent = `${text}.`;
      return item;
    }));
    list.hidden = !rows.length;
  }

  function render(run) {
    const status = root.querySelector("[data-testid=run-status]");
    status.textContent = run.status;
    status.className = `status status-${run.status}`;
    root.querySelector("[data-testid=run-epoch]").textContent = run.current_epoch;
    root.querySelector("[data-testid=n-train-items]").textContent = run.n_train_items;
    root.querySelector("[data-testid=n-holdout-items]").textContent = run.n_holdout_items;
    root.querySelector(".progress .bar").style.width = `${Math.round(run.progress * 100)}%`;
    const reason = root.querySelector("[data-testid=failure-reason]");
    reason.textContent = run.failure_reason;
    reason.hidden = !run.failure_reason;
    const cancel = root.querySelector("[data-action=cancel]");
    if (cancel) cancel.hidden = run.is_finished;
    renderInterruptions(run.interruptions || []);
    drawCurves(run);
    // the report, the comparison and the resume button are rendered by the server
    if (run.is_finished && (!finishedAtLoad || run.status !== statusAtLoad)) window.location.reload();
  }

  async function poll() {
    try {
      const response = await fetch(api, { credentials: "same-origin", headers: { Accept: "application/json" } });
      if (response.ok) {
        const run = await response.json();
        render(run);
        if (run.is_finished) return;
      }
    } catch (error) {
      // a dropped request is retried on the next tick
    }
    window.setTimeout(poll, POLL_MS);
  }

  root.querySelectorAll("button[data-action]").forEach((button) => {
    button.addEventListener("click", async () => {
      button.disabled = true;
      const response = await fetch(`${api}${button.dataset.action}/`, {
        method: "POST",
        credentials: "same-origin",
        headers: { "X-CSRFToken": csrfToken(), Accept: "application/json" },
      });
      if (!response.ok) {
        const body = await response.json().catch(() => ({}));
        window.alert(body.detail || `Request failed (${response.status})`);
      }
      window.location.reload();
    });
  });

  poll();
})();
