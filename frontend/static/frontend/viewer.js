// A small medical image viewer on a <canvas>: the stored full-precision pixels (CT in
// Hounsfield units, 16-bit MR, or an 8-bit picture's 0-255 values) windowed here, as the DICOM
// linear VOI function does; window presets on keys, invert, the W/C and the value under the
// cursor on screen; stacks scrolled slice by slice; fit, zoom and pan. Used by the annotator,
// review and hold-out pages.
//
//   const viewer = new Viewer(stageElement, imgElement, { onChange });
//   await viewer.show(imageUrl);    // the rendering at once, then the pixels from /pixels/
//   viewer.prefetch(imageUrl)       // fetch a coming item's pixels ahead
//   viewer.handleKey(event)         // true when the key was the viewer's
//
// The <img> keeps the server's 8-bit rendering: it shows while the pixels load and gives the
// geometry (the canvas has the same size and transform). Pixels come as raw little-endian
// values with their layout in the X-Pixels header (see labeling/api/views/media.py); a 204
// means the rendering holds every value, and the image itself is windowed.

const MIN_SCALE = 0.05;
const MAX_SCALE = 64;
const clamp = (v, lo, hi) => Math.min(hi, Math.max(lo, v));
const TYPES = { uint8: Uint8Array, int16: Int16Array, uint16: Uint16Array, float32: Float32Array };
// The identity window of 8-bit values under the DICOM formula: 0..255 onto 0..255.
const EIGHT_BIT = { center: 128, width: 256 };
const cache = new Map(); // pixels URL -> Promise of a volume (null: window the image)
const CACHE_SIZE = 4;

export function pixelsUrlOf(imageUrl) {
  return imageUrl.replace(/\/image\/(\?.*)?$/, "/pixels/");
}

function readPresets() {
  const script = document.getElementById("window-presets");
  try {
    return script ? JSON.parse(script.textContent) : [];
  } catch {
    return [];
  }
}

async function fetchVolume(url) {
  const response = await fetch(url, { credentials: "same-origin" });
  if (response.status === 204) return null;
  if (!response.ok) throw new Error(`The pixels could not be loaded (${response.status}).`);
  const layout = JSON.parse(response.headers.get("X-Pixels"));
  const Type = TYPES[layout.dtype];
  if (!Type) throw new Error(`Unknown pixel type ${layout.dtype}.`);
  // Typed arrays read the platform's byte order: little-endian on every browser platform.
  return { ...layout, data: new Type(await response.arrayBuffer()) };
}

function loadVolume(url) {
  if (!cache.has(url)) {
    const promise = fetchVolume(url);
    promise.catch(() => cache.delete(url));
    cache.set(url, promise);
    while (cache.size > CACHE_SIZE) cache.delete(cache.keys().next().value);
  }
  return cache.get(url);
}

// An 8-bit picture's values, read back from the decoded <img> (same origin, so readable).
function volumeOfImage(img) {
  const width = img.naturalWidth;
  const height = img.naturalHeight;
  const canvas = document.createElement("canvas");
  canvas.width = width;
  canvas.height = height;
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  ctx.drawImage(img, 0, 0);
  const rgba = ctx.getImageData(0, 0, width, height).data;
  const n = width * height;
  let gray = true;
  for (let i = 0; i < n * 4 && gray; i += 4) gray = rgba[i] === rgba[i + 1] && rgba[i] === rgba[i + 2];
  const channels = gray ? 1 : 3;
  const data = new Uint8Array(n * channels);
  for (let i = 0; i < n; i++) {
    for (let c = 0; c < channels; c++) data[i * channels + c] = rgba[i * 4 + c];
  }
  return {
    dtype: "uint8", frames: 1, height, width, channels, range: [0, 255],
    window: { ...EIGHT_BIT }, unit: "", invert: false, data,
  };
}

function formatValue(v, integer) {
  if (integer || Number.isInteger(v)) return String(v);
  return String(Number(v.toFixed(2)));
}

export class Viewer {
  constructor(stage, img, { onChange = () => {}, presets = readPresets() } = {}) {
    this.stage = stage;
    this.img = img;
    this.onChange = onChange;
    this.presets = presets;
    this.scale = 1;
    this.x = 0;
    this.y = 0;
    this.volume = null;
    this.window = { ...EIGHT_BIT };
    this.preset = null; // the preset in use, if the window is one
    this.stickyPreset = null; // a preset picked by key stays on for the next items
    this.invert = false;
    this.slice = 0;
    this.cursor = null; // the pointer over the stage, in stage pixels
    this.userMoved = false;
    this.drag = null;
    this.wheelSum = 0;
    this.token = 0;
    img.draggable = false;
    this.canvas = stage.querySelector("canvas[data-testid=item-canvas]") || this.#makeCanvas();
    for (const layer of [img, this.canvas]) {
      Object.assign(layer.style, {
        position: "absolute", left: "0", top: "0", transformOrigin: "0 0", maxWidth: "none",
        userSelect: "none",
      });
    }
    this.readout = this.#makeReadout();
    stage.style.touchAction = "none";
    this.#listen();
  }

  async show(url, { pixelsUrl = pixelsUrlOf(url) } = {}) {
    const token = ++this.token;
    this.volume = null;
    this.canvas.hidden = true;
    this.img.style.opacity = "1";
    this.stage.dataset.pixels = "loading";
    if (this.img.getAttribute("src") !== url) this.img.src = url;
    const pixels = loadVolume(pixelsUrl).catch(() => null);
    try {
      await this.img.decode();
    } catch {
      // A broken image still gets laid out; the caller shows an error of its own.
    }
    if (token !== this.token) return;
    this.userMoved = false;
    this.fit();
    let volume = await pixels;
    if (token !== this.token) return;
    if (!volume && this.img.naturalWidth) volume = volumeOfImage(this.img);
    if (!volume) {
      this.stage.dataset.pixels = "none";
      return;
    }
    this.volume = volume;
    this.slice = Math.floor(volume.frames / 2); // the slice the rendering shows
    this.invert = volume.invert;
    this.#defaultWindow();
    this.canvas.width = volume.width;
    this.canvas.height = volume.height;
    this.#render();
    this.canvas.hidden = false;
    this.img.style.opacity = "0";
    this.stage.dataset.pixels = "ready";
    this.#apply();
  }

  // Nothing on the stage (no item left).
  clear() {
    this.token++;
    this.volume = null;
    this.canvas.hidden = true;
    this.img.removeAttribute("src");
    delete this.stage.dataset.pixels;
    this.#showReadout();
  }

  prefetch(url) {
    loadVolume(pixelsUrlOf(url)).catch(() => {});
  }

  fit() {
    const w = this.img.naturalWidth || this.volume?.width || 1;
    const h = this.img.naturalHeight || this.volume?.height || 1;
    const box = this.stage.getBoundingClientRect();
    this.scale = clamp(Math.min(box.width / w, box.height / h), MIN_SCALE, MAX_SCALE);
    this.x = (box.width - w * this.scale) / 2;
    this.y = (box.height - h * this.scale) / 2;
    this.#apply();
  }

  zoomBy(factor, cx, cy) {
    const box = this.stage.getBoundingClientRect();
    cx = cx ?? box.width / 2;
    cy = cy ?? box.height / 2;
    const next = clamp(this.scale * factor, MIN_SCALE, MAX_SCALE);
    const f = next / this.scale;
    // Keep the point under the cursor where it is.
    this.x = cx - (cx - this.x) * f;
    this.y = cy - (cy - this.y) * f;
    this.scale = next;
    this.userMoved = true;
    this.#apply();
  }

  panBy(dx, dy) {
    this.x += dx;
    this.y += dy;
    this.userMoved = true;
    this.#apply();
  }

  // Window centre and width in the stored units (HU for CT), as DICOM's linear VOI function.
  setWindow(center, width, preset = null) {
    this.window = { center, width: Math.max(1, width) };
    this.preset = preset;
    if (!preset) this.stickyPreset = null;
    this.#render();
    this.#apply();
  }

  applyPreset(key) {
    const preset = this.presets.find((p) => p.key === key);
    if (!preset || !this.#isHounsfield()) return false;
    this.stickyPreset = preset.key;
    this.setWindow(preset.center, preset.width, preset);
    return true;
  }

  toggleInvert() {
    this.invert = !this.invert;
    this.#render();
    this.#apply();
  }

  setSlice(index) {
    if (!this.volume) return;
    const next = clamp(Math.round(index), 0, this.volume.frames - 1);
    if (next === this.slice) return;
    this.slice = next;
    this.#render();
    this.#apply();
  }

  reset() {
    this.stickyPreset = null;
    if (this.volume) {
      this.invert = this.volume.invert;
      this.#defaultWindow();
      this.#render();
    }
    this.userMoved = false;
    this.fit();
  }

  handleKey(event) {
    const key = event.key;
    const frames = this.volume ? this.volume.frames : 1;
    const page = Math.max(1, Math.round(frames / 10));
    switch (key) {
      case "+":
      case "=":
        this.zoomBy(1.25);
        return true;
      case "-":
      case "_":
        this.zoomBy(0.8);
        return true;
      case "r":
      case "R":
        this.reset();
        return true;
      case "i":
      case "I":
        this.toggleInvert();
        return true;
      case "PageUp":
      case "PageDown":
      case "Home":
      case "End":
        if (frames < 2) return false;
        this.setSlice(
          key === "Home" ? 0 : key === "End" ? frames - 1 : this.slice + (key === "PageUp" ? -page : page),
        );
        return true;
      case "ArrowUp":
      case "ArrowDown": {
        const up = key === "ArrowUp";
        if (frames > 1) this.setSlice(this.slice + (up ? -1 : 1));
        // Brighter is a lower centre, by a twentieth of the window.
        else this.setWindow(this.window.center + (up ? -1 : 1) * this.window.width / 20, this.window.width);
        return true;
      }
      case "ArrowLeft":
      case "ArrowRight":
        this.setWindow(this.window.center, this.window.width * (key === "ArrowRight" ? 0.9 : 1 / 0.9));
        return true;
      default: {
        const preset = this.presets.find((p) => p.shortcut === key.toLowerCase());
        return preset ? this.applyPreset(preset.key) : false;
      }
    }
  }

  state() {
    const v = this.volume;
    return {
      scale: this.scale, x: this.x, y: this.y,
      center: this.window.center, width: this.window.width,
      preset: this.preset ? this.preset.key : null, invert: this.invert,
      slice: this.slice, slices: v ? v.frames : 1, unit: v ? v.unit : "",
      range: v ? v.range : [0, 255], ready: Boolean(v),
    };
  }

  // The stored value at an image pixel of the slice shown (an array for colour).
  valueAt(col, row) {
    const v = this.volume;
    if (!v || col < 0 || row < 0 || col >= v.width || row >= v.height) return null;
    const at = ((this.slice * v.height + row) * v.width + col) * v.channels;
    return v.channels === 1 ? v.data[at] : Array.from(v.data.subarray(at, at + v.channels));
  }

  #isHounsfield() {
    return Boolean(this.volume && this.volume.unit === "HU");
  }

  #defaultWindow() {
    const sticky = this.stickyPreset && this.presets.find((p) => p.key === this.stickyPreset);
    if (sticky && this.#isHounsfield()) {
      this.window = { center: sticky.center, width: sticky.width };
      this.preset = sticky;
    } else {
      this.window = { ...this.volume.window };
      this.preset = null;
    }
  }

  #render() {
    const v = this.volume;
    if (!v) return;
    const { width: W, height: H, channels: C, data } = v;
    const n = W * H;
    const start = this.slice * n * C;
    const ctx = this.canvas.getContext("2d");
    const image = ctx.createImageData(W, H);
    const out = image.data; // Uint8ClampedArray: clamps, and rounds half to even as NumPy's rint
    const { center, width } = this.window;
    const invert = this.invert;
    // y = ((x - (c - 0.5)) / (w - 1) + 0.5) * 255, a width of 1 a threshold (PS3.3 C.11.2.1.2.1)
    const base = center - 0.5;
    const slope = width <= 1 ? 0 : 255 / (width - 1);
    const map = (x) => {
      const y = slope ? (x - base) * slope + 127.5 : x > base ? 255 : 0;
      return invert ? 255 - y : y;
    };
    let lut = null;
    const low = v.range[0];
    if (v.dtype !== "float32" && v.range[1] - low < 1 << 17) {
      lut = new Uint8ClampedArray(v.range[1] - low + 1);
      for (let i = 0; i < lut.length; i++) lut[i] = map(low + i);
    }
    for (let i = 0; i < n; i++) {
      for (let c = 0; c < 3; c++) {
        const x = data[start + i * C + (C === 1 ? 0 : c)];
        out[i * 4 + c] = lut ? lut[x - low] : map(x);
      }
      out[i * 4 + 3] = 255;
    }
    ctx.putImageData(image, 0, 0);
  }

  #apply() {
    const transform = `translate(${this.x}px, ${this.y}px) scale(${this.scale})`;
    // Magnified pixels stay crisp: a reader wants to see the pixels, not a blur.
    const rendering = this.scale >= 3 ? "pixelated" : "auto";
    for (const layer of [this.img, this.canvas]) {
      layer.style.transform = transform;
      layer.style.imageRendering = rendering;
    }
    this.#showReadout();
    this.onChange(this.state());
  }

  #showReadout() {
    const v = this.volume;
    const { windowText, sliceText, pixelText } = this.readout;
    const unit = v && v.unit ? ` ${v.unit}` : "";
    const say = (el, text) => {
      el.textContent = text;
      el.hidden = !text;
    };
    if (!v) {
      say(windowText, "");
      say(sliceText, "");
      say(pixelText, "");
      return;
    }
    const round = (x) => String(Math.round(x * 10) / 10);
    const name = this.preset ? ` · ${this.preset.name}` : "";
    say(
      windowText,
      `W ${round(this.window.width)} · C ${round(this.window.center)}${unit}${name}` +
        (this.invert ? " · inverted" : ""),
    );
    say(sliceText, v.frames < 2 ? "" : `Slice ${this.slice + 1} / ${v.frames}`);
    this.stage.dataset.slice = String(this.slice + 1);
    say(pixelText, "");
    if (!this.cursor) return;
    const col = Math.floor((this.cursor.x - this.x) / this.scale);
    const row = Math.floor((this.cursor.y - this.y) / this.scale);
    const value = this.valueAt(col, row);
    if (value === null) return;
    const integer = v.dtype !== "float32";
    const text = Array.isArray(value)
      ? value.map((x) => formatValue(x, integer)).join(", ")
      : formatValue(value, integer);
    say(pixelText, `x ${col} y ${row}: ${text}${unit}`);
  }

  #makeCanvas() {
    const canvas = document.createElement("canvas");
    canvas.dataset.testid = "item-canvas";
    canvas.hidden = true;
    canvas.style.pointerEvents = "none";
    this.img.after(canvas);
    return canvas;
  }

  #makeReadout() {
    const corner = (testid, where) => {
      const el = document.createElement("div");
      el.dataset.testid = testid;
      Object.assign(el.style, {
        position: "absolute", ...where, color: "#e6e9ef", font: "12px/1.3 ui-monospace, monospace",
        background: "rgba(11, 13, 18, 0.6)", padding: "1px 5px", borderRadius: "3px",
        pointerEvents: "none", zIndex: "1", fontVariantNumeric: "tabular-nums", whiteSpace: "nowrap",
      });
      el.hidden = true;
      this.stage.append(el);
      return el;
    };
    return {
      sliceText: corner("slice-readout", { left: "10px", top: "8px" }),
      windowText: corner("window-readout", { left: "10px", bottom: "8px" }),
      pixelText: corner("pixel-readout", { right: "10px", bottom: "8px" }),
    };
  }

  #listen() {
    const { stage } = this;
    stage.addEventListener(
      "wheel",
      (e) => {
        e.preventDefault();
        const box = stage.getBoundingClientRect();
        if (this.volume && this.volume.frames > 1 && !e.ctrlKey) {
          // A stack scrolls slice by slice, as radiologists read; ctrl-wheel (and pinch) zooms.
          // One notch is one slice; a touchpad's small steps add up to one.
          this.wheelSum = Math.abs(e.deltaY) >= 50 ? e.deltaY : this.wheelSum + e.deltaY;
          if (Math.abs(this.wheelSum) >= 50) {
            this.setSlice(this.slice + Math.sign(this.wheelSum));
            this.wheelSum = 0;
          }
          return;
        }
        this.zoomBy(Math.exp(-e.deltaY * 0.0015), e.clientX - box.left, e.clientY - box.top);
      },
      { passive: false },
    );
    stage.addEventListener("pointerdown", (e) => {
      if (e.button !== 0 && e.button !== 2) return;
      stage.setPointerCapture(e.pointerId);
      // Shift-drag or right-drag adjusts window/level, as in radiology viewers.
      const windowing = e.shiftKey || e.button === 2;
      this.drag = { x: e.clientX, y: e.clientY, windowing, ...this.window };
      stage.classList.add(windowing ? "windowing" : "panning");
    });
    stage.addEventListener("pointermove", (e) => {
      const box = stage.getBoundingClientRect();
      this.cursor = { x: e.clientX - box.left, y: e.clientY - box.top };
      if (!this.drag) {
        this.#showReadout();
        return;
      }
      const dx = e.clientX - this.drag.x;
      const dy = e.clientY - this.drag.y;
      if (this.drag.windowing) {
        // Right: wider; down: higher centre (darker). A full stage drag spans the value range.
        const range = this.volume ? Math.max(1, this.volume.range[1] - this.volume.range[0]) : 256;
        const perPixel = range / Math.max(200, box.width);
        this.setWindow(this.drag.center + dy * perPixel, this.drag.width + dx * perPixel);
      } else {
        this.panBy(dx, dy);
        this.drag.x = e.clientX;
        this.drag.y = e.clientY;
      }
    });
    stage.addEventListener("pointerleave", () => {
      this.cursor = null;
      this.#showReadout();
    });
    const end = () => {
      this.drag = null;
      stage.classList.remove("windowing", "panning");
    };
    stage.addEventListener("pointerup", end);
    stage.addEventListener("pointercancel", end);
    stage.addEventListener("contextmenu", (e) => e.preventDefault());
    stage.addEventListener("dblclick", () => this.reset());
    new ResizeObserver(() => {
      if (!this.userMoved) this.fit();
    }).observe(stage);
  }
}
