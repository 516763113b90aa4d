// A small image viewer: fit, zoom (wheel, + / -), pan (drag), window/level as CSS filters
// (shift-drag, arrow keys or sliders), reset (r). Used by the annotator and review pages.
//
//   const viewer = new Viewer(stageElement, imgElement, { onChange });
//   await viewer.show(url);            // resolves once the image is decoded and fitted
//   viewer.handleKey(event)            // true when the key was the viewer's

const MIN_SCALE = 0.05;
const MAX_SCALE = 64;
const clamp = (v, lo, hi) => Math.min(hi, Math.max(lo, v));

export class Viewer {
  constructor(stage, img, { onChange = () => {} } = {}) {
    this.stage = stage;
    this.img = img;
    this.onChange = onChange;
    this.scale = 1;
    this.x = 0;
    this.y = 0;
    this.brightness = 1;
    this.contrast = 1;
    this.userMoved = false;
    this.drag = null;
    img.draggable = false;
    img.style.position = "absolute";
    img.style.left = "0";
    img.style.top = "0";
    img.style.transformOrigin = "0 0";
    img.style.maxWidth = "none";
    img.style.userSelect = "none";
    stage.style.touchAction = "none";
    this.#listen();
  }

  async show(url) {
    if (this.img.getAttribute("src") !== url) {
      this.img.src = url;
    }
    try {
      await this.img.decode();
    } catch {
      // A broken image still gets laid out; the caller shows an error of its own.
    }
    this.userMoved = false;
    this.fit();
  }

  fit() {
    const w = this.img.naturalWidth || 1;
    const h = this.img.naturalHeight || 1;
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

  setWindow(brightness, contrast) {
    this.brightness = clamp(brightness, 0.1, 4);
    this.contrast = clamp(contrast, 0.1, 6);
    this.#apply();
  }

  reset() {
    this.brightness = 1;
    this.contrast = 1;
    this.userMoved = false;
    this.fit();
  }

  handleKey(event) {
    const step = 0.1;
    switch (event.key) {
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
      case "ArrowUp":
        this.setWindow(this.brightness + step, this.contrast);
        return true;
      case "ArrowDown":
        this.setWindow(this.brightness - step, this.contrast);
        return true;
      case "ArrowRight":
        this.setWindow(this.brightness, this.contrast + step);
        return true;
      case "ArrowLeft":
        this.setWindow(this.brightness, this.contrast - step);
        return true;
      default:
        return false;
    }
  }

  state() {
    return { scale: this.scale, x: this.x, y: this.y, brightness: this.brightness, contrast: this.contrast };
  }

  #apply() {
    const { img } = this;
    img.style.transform = `translate(${this.x}px, ${this.y}px) scale(${this.scale})`;
    img.style.filter = `brightness(${this.brightness}) contrast(${this.contrast})`;
    // Magnified pixels stay crisp: a reader wants to see the pixels, not a blur.
    img.style.imageRendering = this.scale >= 3 ? "pixelated" : "auto";
    this.onChange(this.state());
  }

  #listen() {
    const { stage } = this;
    stage.addEventListener(
      "wheel",
      (e) => {
        e.preventDefault();
        const box = stage.getBoundingClientRect();
        this.zoomBy(Math.exp(-e.deltaY * 0.0015), e.clientX - box.left, e.clientY - box.top);
      },
      { passive: false },
    );
    stage.addEventListener("pointerdown", (e) => {
      if (e.button !== 0 && e.button !== 2) return;
      stage.setPointerCapture(e.pointerId);
      // Shift-drag or right-drag adjusts window/level, as in radiology viewers.
      const windowing = e.shiftKey || e.button === 2;
      this.drag = { x: e.clientX, y: e.clientY, windowing, b: this.brightness, c: this.contrast };
      stage.classList.add(windowing ? "windowing" : "panning");
    });
    stage.addEventListener("pointermove", (e) => {
      if (!this.drag) return;
      const dx = e.clientX - this.drag.x;
      const dy = e.clientY - this.drag.y;
      if (this.drag.windowing) {
        this.setWindow(this.drag.b - dy / 200, this.drag.c + dx / 200);
      } else {
        this.panBy(dx, dy);
        this.drag.x = e.clientX;
        this.drag.y = e.clientY;
      }
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
