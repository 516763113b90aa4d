// Drawing regions on the viewer's image: points, boxes, polygons and brushed masks, in image
// pixels (x right, y down, pixel i spans [i, i+1)), as the region contract's wire format.
// Used by the crowd label page of region projects and by the expert review page.
//
//   const regions = new RegionCanvas(viewer, { classes: ["WBC", "RBC"], taskType: "boxes" });
//   regions.setImage(width, height);   // a new item: no shapes, no history, no overlays (first)
//   regions.load(shapes);              // wire format (label = class name) or stored (index)
//   regions.shapes();                  // wire format, masks as uncompressed COCO RLE
//   regions.addLayer("expert", shapes, { dash: [6, 4] });   // read-only overlay
//   regions.setLayerVisible("expert", false); regions.removeLayer("expert");
//   regions.setReadOnly(true);         // nothing editable; the viewer pans under it
//   regions.mountControls({ tools, classes });   // tool bar and class legend buttons
//   regions.handleKey(event)           // true when the key was the canvas's
//
// Touch: one finger draws as the mouse does, two fingers pinch to zoom and pan (what the first
// finger had begun is undone).
//
// One overlay <canvas> the size of the stage, redrawn on every change of the shapes or of the
// viewer's zoom/pan, so lines and handles keep their screen size at any zoom. Masks are one
// bitmap per shape (0/1 per image pixel) drawn through the viewer's transform.

const PALETTE = [
  "#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#9a6324", "#469990",
];
export const colorOf = (index) => PALETTE[index % PALETTE.length];

// Keys avoid the viewer's (r reset, i invert, + - arrows, CT presets l m a t b c).
export const TOOLS = {
  select: { key: "v", name: "Select" },
  pan: { key: "h", name: "Pan" },
  point: { key: "p", name: "Point" },
  box: { key: "x", name: "Box" },
  polygon: { key: "g", name: "Polygon" },
  brush: { key: "d", name: "Brush" },
  eraser: { key: "e", name: "Eraser" },
};
export const TOOLS_OF_TASK = {
  points: ["point", "select", "pan"],
  boxes: ["box", "select", "pan"],
  masks: ["polygon", "box", "brush", "eraser", "select", "pan"],  // a box there is a rectangle mask
};

const HANDLE = 5; // half the side of a resize handle, screen px
const NEAR = 8; // screen px within which a click hits a point, vertex or handle
const HISTORY = 100;
const round2 = (v) => Math.round(v * 100) / 100;
const clamp = (v, lo, hi) => Math.min(hi, Math.max(lo, v));

function hexToRgb(hex) {
  const n = parseInt(hex.slice(1), 16);
  return [(n >> 16) & 255, (n >> 8) & 255, n & 255];
}

// COCO's uncompressed RLE: runs down each column, then the next; the first run is background.
export function rleEncode(data, width, height) {
  const counts = [];
  let value = 0;
  let run = 0;
  for (let x = 0; x < width; x++) {
    for (let y = 0; y < height; y++) {
      const v = data[y * width + x] ? 1 : 0;
      if (v !== value) {
        counts.push(run);
        run = 0;
        value = v;
      }
      run++;
    }
  }
  counts.push(run);
  return { size: [height, width], counts };
}

export function rleDecode(rle, width, height) {
  const [h, w] = rle.size;
  if (h !== height || w !== width) throw new Error(`mask size ${h} x ${w} is not the image's ${height} x ${width}`);
  const data = new Uint8Array(width * height);
  let at = 0;
  let value = 0;
  for (const count of rle.counts) {
    if (value) {
      for (let k = at; k < at + count; k++) data[(k % height) * width + Math.floor(k / height)] = 1;
    }
    at += count;
    value ^= 1;
  }
  return data;
}

function segmentsCross(a, b, c, d) {
  const orient = (p, q, r) => Math.sign((q[0] - p[0]) * (r[1] - p[1]) - (q[1] - p[1]) * (r[0] - p[0]));
  const o1 = orient(a, b, c);
  const o2 = orient(a, b, d);
  const o3 = orient(c, d, a);
  const o4 = orient(c, d, b);
  if (o1 !== o2 && o3 !== o4) return true;
  const onSegment = (p, q, r) =>
    Math.min(p[0], q[0]) <= r[0] && r[0] <= Math.max(p[0], q[0]) &&
    Math.min(p[1], q[1]) <= r[1] && r[1] <= Math.max(p[1], q[1]);
  return (o1 === 0 && onSegment(a, b, c)) || (o2 === 0 && onSegment(a, b, d)) ||
    (o3 === 0 && onSegment(c, d, a)) || (o4 === 0 && onSegment(c, d, b));
}

export function isSimplePolygon(points) {
  const n = points.length;
  for (let i = 0; i < n; i++) {
    const a = points[i];
    const b = points[(i + 1) % n];
    for (let j = i + 1; j < n; j++) {
      // Neighbouring edges share a vertex; that is no crossing.
      if (j === i + 1 || (i === 0 && j === n - 1)) continue;
      if (segmentsCross(a, b, points[j], points[(j + 1) % n])) return false;
    }
  }
  return true;
}

function insidePolygon(points, x, y) {
  let inside = false;
  for (let i = 0, j = points.length - 1; i < points.length; j = i++) {
    const [xi, yi] = points[i];
    const [xj, yj] = points[j];
    if (yi > y !== yj > y && x < ((xj - xi) * (y - yi)) / (yj - yi) + xi) inside = !inside;
  }
  return inside;
}

function distanceToSegment(p, a, b) {
  const dx = b[0] - a[0];
  const dy = b[1] - a[1];
  const len = dx * dx + dy * dy;
  const t = len ? clamp(((p[0] - a[0]) * dx + (p[1] - a[1]) * dy) / len, 0, 1) : 0;
  return Math.hypot(p[0] - a[0] - t * dx, p[1] - a[1] - t * dy);
}

let nextId = 1;

export class RegionCanvas {
  constructor(viewer, { classes, taskType, maxRegions = Infinity, onChange = () => {}, onMessage = () => {}, readOnly = false }) {
    this.viewer = viewer;
    this.stage = viewer.stage;
    this.classes = classes;
    this.taskType = taskType;
    this.tools = TOOLS_OF_TASK[taskType];
    if (!this.tools) throw new Error(`${taskType} is not a region task type`);
    this.maxRegions = maxRegions;
    this.onChange = onChange;
    this.onMessage = onMessage;
    this.width = 0;
    this.height = 0;
    this.items = []; // {id, label, shape, points} or {id, label, shape: "mask", data, bitmap}
    this.layers = new Map(); // id -> {shapes, options}
    this.undoStack = [];
    this.redoStack = [];
    this.selected = null; // id of the selected shape
    this.draft = null; // a polygon being drawn: {points}
    this.gesture = null; // the pointer drag in progress
    this.hover = null; // the pointer in image pixels, for the rubber band and the brush circle
    this.tool = this.tools[0];
    this.classIndex = 0;
    this.brushRadius = 6;
    this.readOnly = false;
    this.controls = null;
    this.touches = new Map(); // pointer id -> [clientX, clientY] of each finger on the canvas
    this.pinch = null; // two fingers zoom and pan: {distance, middle}
    this.firstTouch = null; // what the first finger's action changed, undone if a pinch follows

    this.canvas = document.createElement("canvas");
    this.canvas.dataset.testid = "region-canvas";
    Object.assign(this.canvas.style, {
      position: "absolute", left: "0", top: "0", width: "100%", height: "100%", zIndex: "1",
      touchAction: "none",
    });
    this.stage.append(this.canvas);
    // Redraw with every zoom, pan or window change of the viewer.
    const previous = viewer.onChange;
    viewer.onChange = (state) => {
      previous(state);
      this.render();
    };
    new ResizeObserver(() => this.render()).observe(this.stage);
    this.#listen();
    this.setReadOnly(readOnly);
    this.#sync();
  }

  // --- the set of shapes ---------------------------------------------------------------------

  setImage(width, height) {
    this.width = width;
    this.height = height;
    this.items = [];
    this.layers.clear();
    this.undoStack = [];
    this.redoStack = [];
    this.selected = null;
    this.draft = null;
    this.gesture = null;
    this.brushRadius = Math.max(2, Math.round(Math.min(width, height) / 60));
    this.#changed(false);
  }

  load(shapes) {
    this.items = shapes.map((s) => this.#fromWire(s)).filter(Boolean);
    this.undoStack = [];
    this.redoStack = [];
    this.selected = null;
    this.draft = null;
    this.#changed(false);
  }

  shapes() {
    const out = [];
    for (const item of this.items) {
      const label = this.classes[item.label];
      if (item.shape === "mask") {
        if (!item.data.some((v) => v)) continue;
        out.push({ label, shape: "mask", rle: rleEncode(item.data, this.width, this.height) });
      } else {
        out.push({ label, shape: item.shape, points: item.points.map(([x, y]) => [round2(x), round2(y)]) });
      }
    }
    return out;
  }

  get count() {
    return this.items.length;
  }

  clear() {
    if (!this.items.length) return;
    this.#remember();
    this.items = [];
    this.selected = null;
    this.#changed();
  }

  deleteSelected() {
    if (this.readOnly || this.selected === null) return false;
    this.#remember();
    this.items = this.items.filter((item) => item.id !== this.selected);
    this.selected = null;
    this.#changed();
    return true;
  }

  undo() {
    if (this.draft) {
      this.draft = null;
      this.render();
      return true;
    }
    if (this.readOnly || !this.undoStack.length) return false;
    this.redoStack.push(this.#snapshot());
    this.#restore(this.undoStack.pop());
    return true;
  }

  redo() {
    if (this.readOnly || !this.redoStack.length) return false;
    this.undoStack.push(this.#snapshot());
    this.#restore(this.redoStack.pop());
    return true;
  }

  // --- tools, classes, overlays --------------------------------------------------------------

  setTool(tool) {
    if (!this.tools.includes(tool)) return false;
    this.tool = tool;
    this.draft = null;
    if (tool !== "select") this.selected = null;
    this.#sync();
    this.render();
    return true;
  }

  // The class of the next shape; a selected shape takes it too.
  setClass(index) {
    if (index < 0 || index >= this.classes.length) return false;
    this.classIndex = index;
    const item = this.#selectedItem();
    if (item && item.label !== index && !this.readOnly) {
      this.#remember();
      item.label = index;
      if (item.shape === "mask") item.bitmap = null;
      this.#changed();
    }
    this.#sync();
    this.render();
    return true;
  }

  setBrushRadius(radius) {
    this.brushRadius = clamp(Math.round(radius), 1, 200);
    this.#sync();
    this.render();
  }

  setReadOnly(readOnly) {
    this.readOnly = readOnly;
    this.draft = null;
    this.gesture = null;
    this.selected = null;
    // Read-only: the pointer goes to the viewer (pan, window/level).
    this.canvas.style.pointerEvents = readOnly ? "none" : "auto";
    this.#sync();
    this.render();
  }

  addLayer(id, shapes, { dash = [6, 4], opacity = 1, color = null, width = 2, visible = true } = {}) {
    const items = shapes.map((s) => this.#fromWire(s)).filter(Boolean);
    this.layers.set(id, { items, options: { dash, opacity, color, width }, visible });
    this.render();
  }

  setLayerVisible(id, visible) {
    const layer = this.layers.get(id);
    if (!layer) return;
    layer.visible = visible;
    this.render();
  }

  removeLayer(id) {
    this.layers.delete(id);
    this.render();
  }

  clearLayers() {
    this.layers.clear();
    this.render();
  }

  handleKey(event) {
    const key = event.key;
    if (event.ctrlKey || event.metaKey) {
      if (key === "z" || key === "Z") return event.shiftKey ? this.redo() || true : this.undo() || true;
      if (key === "y" || key === "Y") return this.redo() || true;
      return false;
    }
    if (event.altKey) return false;
    if (/^[1-9]$/.test(key) && Number(key) <= this.classes.length) return this.setClass(Number(key) - 1);
    const tool = this.tools.find((t) => TOOLS[t].key === key.toLowerCase());
    if (tool) return this.setTool(tool);
    if (this.readOnly) return false;
    switch (key) {
      case "Enter":
        return this.draft ? this.#closeDraft() || true : false;
      case "Escape":
        if (this.draft) this.draft = null;
        else if (this.selected !== null) this.selected = null;
        else return false;
        this.render();
        return true;
      case "Backspace":
        if (this.draft) {
          this.draft.points.pop();
          if (!this.draft.points.length) this.draft = null;
          this.render();
          return true;
        }
        return this.deleteSelected();
      case "Delete":
        return this.deleteSelected();
      case "[":
      case "]":
        if (!this.tools.includes("brush")) return false;
        this.setBrushRadius(this.brushRadius * (key === "]" ? 1.25 : 0.8) + (key === "]" ? 1 : -1));
        return true;
      default:
        return false;
    }
  }

  // Tool buttons, the class legend (colour, key, name) and the edit buttons, into the given
  // elements; they follow the canvas's state.
  mountControls({ tools, classes, actions = tools }) {
    const make = (text, testid, key, onClick) => {
      const button = document.createElement("button");
      button.type = "button";
      button.dataset.testid = testid;
      if (key) {
        const kbd = document.createElement("kbd");
        kbd.textContent = key;
        button.append(kbd, " ");
      }
      button.append(text);
      button.addEventListener("click", () => {
        onClick();
        button.blur(); // keys keep working after a click
      });
      return button;
    };
    const toolButtons = new Map();
    for (const tool of this.tools) {
      const b = make(TOOLS[tool].name, `tool-${tool}`, TOOLS[tool].key.toUpperCase(), () => this.setTool(tool));
      b.title = `${TOOLS[tool].name} (${TOOLS[tool].key.toUpperCase()})`;
      toolButtons.set(tool, b);
      tools.append(b);
    }
    const classButtons = this.classes.map((name, i) => {
      const b = make(name, `region-class-${i + 1}`, String(i + 1), () => this.setClass(i));
      const swatch = document.createElement("span");
      swatch.className = "swatch";
      Object.assign(swatch.style, {
        display: "inline-block", width: "0.9em", height: "0.9em", borderRadius: "2px",
        background: colorOf(i), marginRight: "0.35em", verticalAlign: "-0.1em",
      });
      b.prepend(swatch);
      classes.append(b);
      return b;
    });
    const editButtons = {
      undo: make("Undo", "region-undo", "Ctrl+Z", () => this.undo()),
      redo: make("Redo", "region-redo", "Ctrl+Shift+Z", () => this.redo()),
      remove: make("Delete", "region-delete", "Del", () => this.deleteSelected()),
    };
    actions.append(editButtons.undo, editButtons.redo, editButtons.remove);
    let brush = null;
    if (this.tools.includes("brush")) {
      const label = document.createElement("label");
      label.className = "brush-size";
      label.textContent = "Brush ";
      brush = document.createElement("input");
      brush.type = "range";
      brush.min = "1";
      brush.max = "60";
      brush.dataset.testid = "brush-size";
      brush.addEventListener("input", () => this.setBrushRadius(Number(brush.value)));
      const hint = document.createElement("kbd");
      hint.textContent = "[ ]";
      label.append(brush, " ", hint);
      actions.append(label);
    }
    this.controls = { toolButtons, classButtons, editButtons, brush };
    this.#sync();
  }

  // --- coordinates -------------------------------------------------------------------------

  toImage(clientX, clientY) {
    const box = this.stage.getBoundingClientRect();
    const { x, y, scale } = this.viewer;
    return [(clientX - box.left - x) / scale, (clientY - box.top - y) / scale];
  }

  toStage([px, py]) {
    const { x, y, scale } = this.viewer;
    return [x + px * scale, y + py * scale];
  }

  // --- drawing ---------------------------------------------------------------------------

  render() {
    const canvas = this.canvas;
    const dpr = window.devicePixelRatio || 1;
    const box = this.stage.getBoundingClientRect();
    const w = Math.round(box.width * dpr);
    const h = Math.round(box.height * dpr);
    if (canvas.width !== w || canvas.height !== h) {
      canvas.width = w;
      canvas.height = h;
    }
    const ctx = canvas.getContext("2d");
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.clearRect(0, 0, w, h);
    canvas.dataset.count = String(this.items.length);
    canvas.dataset.layers = [...this.layers].filter(([, l]) => l.visible).map(([id]) => id).join(" ");
    if (!this.width) return;
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    for (const layer of this.layers.values()) {
      if (!layer.visible) continue;
      for (const item of layer.items) this.#drawItem(ctx, item, layer.options);
    }
    const moving = this.gesture && this.gesture.type === "move" ? this.gesture : null;
    for (const item of this.items) {
      const offset = moving && moving.id === item.id && item.shape === "mask" ? moving.offset : null;
      this.#drawItem(ctx, item, { selected: item.id === this.selected, offset });
    }
    const item = this.#selectedItem();
    if (item && !this.readOnly) this.#drawHandles(ctx, item);
    this.#drawDraft(ctx);
  }

  #drawItem(ctx, item, { dash = [], opacity = 1, color = null, width = 2, selected = false, offset = null } = {}) {
    const stroke = color || colorOf(item.label);
    ctx.save();
    ctx.globalAlpha = opacity;
    ctx.setLineDash(dash);
    ctx.lineWidth = selected ? width + 1.5 : width;
    ctx.strokeStyle = stroke;
    if (item.shape === "mask") {
      const bitmap = this.#bitmapOf(item, stroke);
      const { x, y, scale } = this.viewer;
      const [dx, dy] = offset || [0, 0];
      ctx.imageSmoothingEnabled = false;
      ctx.globalAlpha = opacity * (selected ? 0.7 : 0.45);
      ctx.drawImage(bitmap, x + dx * scale, y + dy * scale, this.width * scale, this.height * scale);
      ctx.restore();
      return;
    }
    const pts = item.points.map((p) => this.toStage(p));
    if (item.shape === "point") {
      const [sx, sy] = pts[0];
      ctx.beginPath();
      ctx.arc(sx, sy, selected ? 7 : 5, 0, 2 * Math.PI);
      ctx.fillStyle = stroke;
      ctx.globalAlpha = opacity * 0.85;
      ctx.fill();
      ctx.setLineDash([]);
      ctx.lineWidth = 1.5;
      ctx.strokeStyle = "#fff";
      ctx.stroke();
    } else {
      ctx.beginPath();
      if (item.shape === "box") {
        const [[x0, y0], [x1, y1]] = pts;
        ctx.rect(x0, y0, x1 - x0, y1 - y0);
      } else {
        pts.forEach(([sx, sy], i) => (i ? ctx.lineTo(sx, sy) : ctx.moveTo(sx, sy)));
        ctx.closePath();
      }
      ctx.fillStyle = stroke;
      ctx.globalAlpha = opacity * (selected ? 0.3 : 0.15);
      ctx.fill();
      ctx.globalAlpha = opacity;
      ctx.stroke();
    }
    ctx.restore();
  }

  #drawHandles(ctx, item) {
    if (item.shape === "mask") return;
    ctx.save();
    ctx.fillStyle = "#fff";
    ctx.strokeStyle = "#1d2330";
    ctx.lineWidth = 1;
    for (const [, [sx, sy]] of this.#handlesOf(item)) {
      ctx.fillRect(sx - HANDLE, sy - HANDLE, 2 * HANDLE, 2 * HANDLE);
      ctx.strokeRect(sx - HANDLE, sy - HANDLE, 2 * HANDLE, 2 * HANDLE);
    }
    ctx.restore();
  }

  #drawDraft(ctx) {
    const color = colorOf(this.classIndex);
    ctx.save();
    ctx.strokeStyle = color;
    ctx.lineWidth = 2;
    if (this.gesture && this.gesture.type === "new-box") {
      const [x0, y0] = this.toStage(this.gesture.start);
      const [x1, y1] = this.toStage(this.gesture.end);
      ctx.setLineDash([5, 3]);
      ctx.strokeRect(x0, y0, x1 - x0, y1 - y0);
    }
    if (this.draft) {
      const pts = this.draft.points.map((p) => this.toStage(p));
      ctx.beginPath();
      pts.forEach(([sx, sy], i) => (i ? ctx.lineTo(sx, sy) : ctx.moveTo(sx, sy)));
      if (this.hover) ctx.lineTo(...this.toStage(this.hover));
      ctx.stroke();
      ctx.fillStyle = "#fff";
      pts.forEach(([sx, sy], i) => {
        ctx.beginPath();
        ctx.arc(sx, sy, i === 0 ? 6 : 3.5, 0, 2 * Math.PI);
        ctx.fill();
        ctx.stroke();
      });
    }
    if (this.hover && !this.readOnly && (this.tool === "brush" || this.tool === "eraser")) {
      const [sx, sy] = this.toStage(this.hover);
      ctx.beginPath();
      ctx.arc(sx, sy, this.brushRadius * this.viewer.scale, 0, 2 * Math.PI);
      ctx.strokeStyle = this.tool === "eraser" ? "#fff" : color;
      ctx.setLineDash([3, 3]);
      ctx.stroke();
    }
    ctx.restore();
  }

  // A mask's pixels as a bitmap in its class colour (rebuilt when the mask or class changes).
  #bitmapOf(item, color) {
    if (item.bitmap && item.bitmapColor === color) return item.bitmap;
    const bitmap = document.createElement("canvas");
    bitmap.width = this.width;
    bitmap.height = this.height;
    const image = new ImageData(this.width, this.height);
    const [r, g, b] = hexToRgb(color);
    for (let i = 0; i < item.data.length; i++) {
      if (!item.data[i]) continue;
      image.data[i * 4] = r;
      image.data[i * 4 + 1] = g;
      image.data[i * 4 + 2] = b;
      image.data[i * 4 + 3] = 255;
    }
    bitmap.getContext("2d").putImageData(image, 0, 0);
    Object.assign(item, { bitmap, bitmapColor: color, image, rgb: [r, g, b] });
    return bitmap;
  }

  // --- editing -----------------------------------------------------------------------------

  #fromWire(shape) {
    const label = typeof shape.label === "number" ? shape.label : this.classes.indexOf(shape.label);
    if (label < 0 || label >= this.classes.length) return null;
    if (shape.shape === "mask") {
      try {
        return { id: nextId++, label, shape: "mask", data: rleDecode(shape.rle, this.width, this.height) };
      } catch (error) {
        this.onMessage(error.message);
        return null;
      }
    }
    if (!Array.isArray(shape.points)) return null;
    return { id: nextId++, label, shape: shape.shape, points: shape.points.map(([x, y]) => [x, y]) };
  }

  #snapshot() {
    return this.items.map((item) =>
      item.shape === "mask"
        ? { id: item.id, label: item.label, shape: "mask", data: item.data.slice() }
        : { id: item.id, label: item.label, shape: item.shape, points: item.points.map((p) => [...p]) },
    );
  }

  #restore(items) {
    this.items = items;
    if (!items.some((item) => item.id === this.selected)) this.selected = null;
    this.#changed();
  }

  #remember(snapshot = this.#snapshot()) {
    this.undoStack.push(snapshot);
    if (this.undoStack.length > HISTORY) this.undoStack.shift();
    this.redoStack = [];
  }

  #changed(notify = true) {
    this.#sync();
    this.render();
    if (notify) this.onChange(this);
  }

  #selectedItem() {
    return this.selected === null ? null : this.items.find((item) => item.id === this.selected) || null;
  }

  #room() {
    if (this.items.length < this.maxRegions) return true;
    this.onMessage(`This project takes at most ${this.maxRegions} regions per image.`);
    return false;
  }

  #clampPoint([x, y]) {
    return [clamp(x, 0, this.width), clamp(y, 0, this.height)];
  }

  #add(item) {
    this.#remember();
    this.items.push({ id: nextId++, ...item });
    this.#changed();
  }

  #closeDraft() {
    const scale = this.viewer.scale;
    // A double click adds its spot twice; repeated vertices are one.
    const points = [];
    for (const p of this.draft.points) {
      const last = points[points.length - 1];
      if (!last || Math.hypot(p[0] - last[0], p[1] - last[1]) * scale > 2) points.push(p);
    }
    const first = points[0];
    const last = points[points.length - 1];
    if (points.length > 1 && Math.hypot(first[0] - last[0], first[1] - last[1]) * scale <= NEAR) points.pop();
    if (points.length < 3) {
      this.onMessage("A polygon needs at least 3 vertices.");
      return false;
    }
    if (!isSimplePolygon(points)) {
      this.onMessage("The polygon crosses itself: move the last vertices or press Backspace.");
      return false;
    }
    if (!this.#room()) return false;
    this.draft = null;
    this.#add({ label: this.classIndex, shape: "polygon", points });
    return true;
  }

  // Handles of a shape in stage pixels: [name, [sx, sy]].
  #handlesOf(item) {
    if (item.shape === "box") {
      const [[x0, y0], [x1, y1]] = item.points.map((p) => this.toStage(p));
      const mx = (x0 + x1) / 2;
      const my = (y0 + y1) / 2;
      return [
        ["nw", [x0, y0]], ["n", [mx, y0]], ["ne", [x1, y0]], ["e", [x1, my]],
        ["se", [x1, y1]], ["s", [mx, y1]], ["sw", [x0, y1]], ["w", [x0, my]],
      ];
    }
    if (item.shape === "polygon") return item.points.map((p, i) => [i, this.toStage(p)]);
    return [];
  }

  #hitHandle(item, sx, sy) {
    for (const [name, [hx, hy]] of this.#handlesOf(item)) {
      if (Math.abs(hx - sx) <= NEAR && Math.abs(hy - sy) <= NEAR) return name;
    }
    return null;
  }

  // The topmost shape under a point (image pixels).
  #hitShape(p) {
    const tolerance = NEAR / this.viewer.scale;
    for (let i = this.items.length - 1; i >= 0; i--) {
      const item = this.items[i];
      if (item.shape === "point") {
        const [x, y] = item.points[0];
        if (Math.hypot(p[0] - x, p[1] - y) <= tolerance) return item;
      } else if (item.shape === "box") {
        const [[x0, y0], [x1, y1]] = item.points;
        if (p[0] >= x0 - tolerance && p[0] <= x1 + tolerance && p[1] >= y0 - tolerance && p[1] <= y1 + tolerance) {
          return item;
        }
      } else if (item.shape === "polygon") {
        const pts = item.points;
        if (insidePolygon(pts, p[0], p[1])) return item;
        if (pts.some((a, k) => distanceToSegment(p, a, pts[(k + 1) % pts.length]) <= tolerance)) return item;
      } else {
        const col = Math.floor(p[0]);
        const row = Math.floor(p[1]);
        if (col >= 0 && row >= 0 && col < this.width && row < this.height && item.data[row * this.width + col]) {
          return item;
        }
      }
    }
    return null;
  }

  // Paint (or erase) a disc of the brush's radius; pixel (i, j) counts when its centre is inside.
  #stamp(targets, [cx, cy], value) {
    const r = this.brushRadius;
    const x0 = Math.max(0, Math.floor(cx - r));
    const x1 = Math.min(this.width - 1, Math.ceil(cx + r));
    const y0 = Math.max(0, Math.floor(cy - r));
    const y1 = Math.min(this.height - 1, Math.ceil(cy + r));
    if (x0 > x1 || y0 > y1) return;
    for (const item of targets) {
      const image = item.bitmap ? item.image : null;
      for (let row = y0; row <= y1; row++) {
        for (let col = x0; col <= x1; col++) {
          if ((col + 0.5 - cx) ** 2 + (row + 0.5 - cy) ** 2 > r * r) continue;
          const at = row * this.width + col;
          item.data[at] = value;
          if (image) {
            image.data[at * 4] = item.rgb[0];
            image.data[at * 4 + 1] = item.rgb[1];
            image.data[at * 4 + 2] = item.rgb[2];
            image.data[at * 4 + 3] = value ? 255 : 0;
          }
        }
      }
      if (image) item.bitmap.getContext("2d").putImageData(image, 0, 0, x0, y0, x1 - x0 + 1, y1 - y0 + 1);
    }
  }

  #strokeTo(p) {
    const g = this.gesture;
    const [ax, ay] = g.last;
    const steps = Math.max(1, Math.ceil(Math.hypot(p[0] - ax, p[1] - ay) / Math.max(0.5, this.brushRadius / 2)));
    for (let k = 1; k <= steps; k++) {
      this.#stamp(g.targets, [ax + ((p[0] - ax) * k) / steps, ay + ((p[1] - ay) * k) / steps], g.value);
    }
    g.last = p;
    g.changed = true;
  }

  #startPaint(p, erase) {
    const before = this.#snapshot();
    let targets;
    if (erase) {
      targets = this.items.filter((item) => item.shape === "mask");
    } else {
      // The brush paints into the class's one mask.
      let mask = this.items.find((item) => item.shape === "mask" && item.label === this.classIndex);
      if (!mask) {
        if (!this.#room()) return;
        mask = { id: nextId++, label: this.classIndex, shape: "mask", data: new Uint8Array(this.width * this.height) };
        this.items.push(mask);
      }
      targets = [mask];
    }
    for (const item of targets) this.#bitmapOf(item, colorOf(item.label));
    this.gesture = { type: "paint", before, targets, value: erase ? 0 : 1, last: p, changed: false };
    this.#stamp(targets, p, this.gesture.value);
    this.gesture.changed = true;
  }

  #startSelect(p, sx, sy) {
    const selected = this.#selectedItem();
    const handle = selected ? this.#hitHandle(selected, sx, sy) : null;
    if (handle !== null) {
      this.gesture = { type: "handle", id: selected.id, handle, before: this.#snapshot(), start: p, changed: false };
      return;
    }
    const hit = this.#hitShape(p);
    this.selected = hit ? hit.id : null;
    if (hit) {
      this.classIndex = hit.label;
      this.gesture = {
        type: "move", id: hit.id, before: this.#snapshot(), start: p, offset: [0, 0], changed: false,
        origin: hit.points ? hit.points.map((q) => [...q]) : null,
      };
    }
    this.#sync();
  }

  #moveTo(p) {
    const g = this.gesture;
    const item = this.items.find((it) => it.id === g.id);
    if (!item) return;
    let dx = p[0] - g.start[0];
    let dy = p[1] - g.start[1];
    g.changed = g.changed || Math.hypot(dx, dy) * this.viewer.scale >= 1;
    if (!g.changed) return;
    if (item.shape === "mask") {
      g.offset = [Math.round(dx), Math.round(dy)];
      return;
    }
    // The whole shape stays on the image.
    const xs = g.origin.map((q) => q[0]);
    const ys = g.origin.map((q) => q[1]);
    dx = clamp(dx, -Math.min(...xs), this.width - Math.max(...xs));
    dy = clamp(dy, -Math.min(...ys), this.height - Math.max(...ys));
    item.points = g.origin.map(([x, y]) => [x + dx, y + dy]);
  }

  #dragHandle(p) {
    const g = this.gesture;
    const item = this.items.find((it) => it.id === g.id);
    if (!item) return;
    const [x, y] = this.#clampPoint(p);
    g.changed = true;
    if (item.shape === "polygon") {
      item.points[g.handle] = [x, y];
      return;
    }
    const [[x0, y0], [x1, y1]] = item.points;
    const h = g.handle;
    item.points = [
      [h.includes("w") ? x : x0, h.includes("n") ? y : y0],
      [h.includes("e") ? x : x1, h.includes("s") ? y : y1],
    ];
  }

  #finishGesture() {
    const g = this.gesture;
    this.gesture = null;
    if (!g) return;
    if (g.type === "new-box") {
      const [ax, ay] = this.#clampPoint(g.start);
      const [bx, by] = this.#clampPoint(g.end);
      const scale = this.viewer.scale;
      if (Math.abs(bx - ax) * scale < 3 || Math.abs(by - ay) * scale < 3) {
        this.render();
        return; // a click, not a box
      }
      if (!this.#room()) return this.render();
      this.#add({ label: this.classIndex, shape: "box", points: [[Math.min(ax, bx), Math.min(ay, by)], [Math.max(ax, bx), Math.max(ay, by)]] });
      return;
    }
    if (!g.changed) {
      this.render();
      return;
    }
    const item = this.items.find((it) => it.id === g.id);
    if (g.type === "move" && item && item.shape === "mask") this.#shiftMask(item, g.offset);
    if (g.type === "handle" && item) {
      if (item.shape === "box") {
        const [[x0, y0], [x1, y1]] = item.points;
        item.points = [[Math.min(x0, x1), Math.min(y0, y1)], [Math.max(x0, x1), Math.max(y0, y1)]];
        if (item.points[0][0] === item.points[1][0] || item.points[0][1] === item.points[1][1]) {
          this.#restore(g.before);
          this.onMessage("A box needs an area.");
          return;
        }
      } else if (item.shape === "polygon" && !isSimplePolygon(item.points)) {
        this.#restore(g.before);
        this.onMessage("That would make the polygon cross itself.");
        return;
      }
    }
    if (g.type === "paint" && g.value === 0) {
      // An erased mask with nothing left is no region.
      this.items = this.items.filter((it) => it.shape !== "mask" || it.data.some((v) => v));
    }
    this.#remember(g.before);
    this.#changed();
  }

  #shiftMask(item, [dx, dy]) {
    const { width: W, height: H } = this;
    const data = new Uint8Array(W * H);
    for (let row = 0; row < H; row++) {
      const to = row + dy;
      if (to < 0 || to >= H) continue;
      for (let col = 0; col < W; col++) {
        const tc = col + dx;
        if (tc >= 0 && tc < W && item.data[row * W + col]) data[to * W + tc] = 1;
      }
    }
    item.data = data;
    item.bitmap = null;
  }

  // A second finger turns the first finger's stroke, mark or vertex into a pinch: undone.
  #startPinch() {
    const first = this.firstTouch;
    this.firstTouch = null;
    this.gesture = null;
    if (first) {
      this.items = first.items;
      this.undoStack.length = Math.min(this.undoStack.length, first.undo);
      this.redoStack = first.redo;
      this.selected = first.selected;
      if (first.draft === null) this.draft = null;
      else if (this.draft) this.draft.points.length = first.draft;
      this.#changed();
    }
    this.pinch = this.#fingers();
  }

  #fingers() {
    const [[ax, ay], [bx, by]] = [...this.touches.values()];
    return { distance: Math.max(1, Math.hypot(bx - ax, by - ay)), middle: [(ax + bx) / 2, (ay + by) / 2] };
  }

  #movePinch() {
    const now = this.#fingers();
    const box = this.stage.getBoundingClientRect();
    const [mx, my] = now.middle;
    this.viewer.zoomBy(now.distance / this.pinch.distance, mx - box.left, my - box.top);
    this.viewer.panBy(mx - this.pinch.middle[0], my - this.pinch.middle[1]);
    this.pinch = now;
  }

  #listen() {
    const canvas = this.canvas;
    canvas.addEventListener("pointerdown", (e) => {
      if (!this.width || this.tool === "pan") return; // the viewer pans
      // Right- and shift-drag stay the viewer's window/level; the middle button pans.
      if (e.button === 2 || e.shiftKey) return;
      e.stopPropagation();
      e.preventDefault();
      if (e.pointerType === "touch") {
        this.touches.set(e.pointerId, [e.clientX, e.clientY]);
        if (this.touches.size === 2) {
          canvas.setPointerCapture(e.pointerId);
          this.#startPinch();
          return;
        }
        if (this.touches.size > 2 || this.pinch) return;
        this.firstTouch = {
          items: this.#snapshot(), undo: this.undoStack.length, redo: this.redoStack.slice(),
          selected: this.selected, draft: this.draft ? this.draft.points.length : null,
        };
      }
      if (this.gesture) return;
      canvas.setPointerCapture(e.pointerId);
      const box = this.stage.getBoundingClientRect();
      const sx = e.clientX - box.left;
      const sy = e.clientY - box.top;
      const p = this.toImage(e.clientX, e.clientY);
      if (e.button === 1) {
        this.gesture = { type: "pan", x: e.clientX, y: e.clientY };
        return;
      }
      if (e.button !== 0) return;
      const inside = p[0] >= 0 && p[1] >= 0 && p[0] <= this.width && p[1] <= this.height;
      switch (this.tool) {
        case "select":
          this.#startSelect(p, sx, sy);
          break;
        case "point": {
          // A double click (or a double tap) marks one point, not two on the same spot.
          const twice = this.items.some(
            (it) => it.shape === "point" && it.label === this.classIndex &&
              Math.hypot(it.points[0][0] - p[0], it.points[0][1] - p[1]) * this.viewer.scale < 3,
          );
          if (!inside || twice || !this.#room()) break;
          this.#add({ label: this.classIndex, shape: "point", points: [p] });
          break;
        }
        case "box":
          if (inside) this.gesture = { type: "new-box", start: p, end: p };
          break;
        case "polygon":
          if (!inside) break;
          if (!this.draft) {
            this.draft = { points: [this.#clampPoint(p)] };
          } else {
            const [fx, fy] = this.toStage(this.draft.points[0]);
            if (this.draft.points.length >= 3 && Math.hypot(fx - sx, fy - sy) <= NEAR) this.#closeDraft();
            else this.draft.points.push(this.#clampPoint(p));
          }
          break;
        case "brush":
        case "eraser":
          if (inside) this.#startPaint(p, this.tool === "eraser");
          break;
      }
      this.hover = p;
      this.render();
    });
    canvas.addEventListener("pointermove", (e) => {
      if (this.touches.has(e.pointerId)) this.touches.set(e.pointerId, [e.clientX, e.clientY]);
      if (this.pinch) {
        if (this.touches.size === 2) this.#movePinch();
        return;
      }
      const p = this.toImage(e.clientX, e.clientY);
      this.hover = p;
      const g = this.gesture;
      if (g && g.type === "pan") {
        this.viewer.panBy(e.clientX - g.x, e.clientY - g.y);
        g.x = e.clientX;
        g.y = e.clientY;
        return;
      }
      if (g && g.type === "new-box") g.end = p;
      else if (g && g.type === "paint") this.#strokeTo(p);
      else if (g && g.type === "move") this.#moveTo(p);
      else if (g && g.type === "handle") this.#dragHandle(p);
      this.render();
    });
    const end = (e) => {
      if (canvas.hasPointerCapture(e.pointerId)) canvas.releasePointerCapture(e.pointerId);
      this.touches.delete(e.pointerId);
      if (this.pinch) {
        // The fingers left after a pinch draw nothing until all are lifted.
        if (!this.touches.size) this.pinch = null;
        return;
      }
      if (!this.touches.size) this.firstTouch = null;
      if (this.gesture && this.gesture.type === "pan") this.gesture = null;
      else this.#finishGesture();
    };
    canvas.addEventListener("pointerup", end);
    canvas.addEventListener("pointercancel", end);
    canvas.addEventListener("pointerleave", () => {
      this.hover = null;
      this.render();
    });
    canvas.addEventListener("dblclick", (e) => {
      if (this.tool === "pan") return; // the viewer's double click resets the view
      e.stopPropagation();
      if (this.draft) this.#closeDraft();
      this.render();
    });
  }

  #sync() {
    this.canvas.dataset.tool = this.tool;
    this.canvas.dataset.classIndex = String(this.classIndex);
    this.canvas.style.cursor = this.tool === "pan" ? "grab" : this.tool === "select" ? "default" : "crosshair";
    if (!this.controls) return;
    const { toolButtons, classButtons, editButtons, brush } = this.controls;
    for (const [tool, b] of toolButtons) {
      b.classList.toggle("on", tool === this.tool);
      b.disabled = this.readOnly && tool !== "pan";
    }
    classButtons.forEach((b, i) => b.classList.toggle("on", i === this.classIndex));
    editButtons.undo.disabled = this.readOnly || !this.undoStack.length;
    editButtons.redo.disabled = this.readOnly || !this.redoStack.length;
    editButtons.remove.disabled = this.readOnly || this.selected === null;
    if (brush) brush.value = String(this.brushRadius);
  }
}
