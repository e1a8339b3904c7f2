// A hostile JavaScript plugin for the tests (tests/tests/plugins_polyglot.rs): its config's
// `mode` picks the misbehaviour, at every hook, as tests/plugins/hostile does in Rust:
// `exception` (an uncaught exception), `loop`, `alloc` (1 GiB), `huge-output`, `bad-index`,
// `bad-config`, `ok`; or `none`, which asks for no call at all (`selector.none()`).
import { exportPlugin } from "../../../sdk/js/component.js";
import { ConfigError, Edits, Plugin, selector } from "../../../sdk/js/index.js";

const MODES = new Set(["exception", "loop", "alloc", "huge-output", "bad-index", "bad-config", "ok", "none"]);

class Hostile extends Plugin {
  static NAME = "hostile-js";
  static VERSION = "0.1.0";

  constructor(config) {
    super(config);
    this.mode = config.mode ?? "ok";
    if (!MODES.has(this.mode) || this.mode === "bad-config") {
      throw new ConfigError(`unknown mode ${JSON.stringify(this.mode)}`);
    }
    this.hoard = [];
  }

  selectors() {
    return this.mode === "none" ? [selector.none()] : [];
  }

  /** `true` = go on with the hook's own answer. */
  misbehave(out, attrs) {
    switch (this.mode) {
      case "exception":
        throw new Error("hostile: throwing on purpose");
      case "loop": {
        let x = 0;
        for (;;) x = (x + 1) | 0;
      }
      case "alloc":
        // Touched, so it is really there: 1 GiB in 64 MiB pieces.
        for (let i = 0; i < 16; i++) this.hoard.push(new Uint8Array(64 << 20).fill(1));
        return true;
      case "huge-output":
        for (let i = 0; i < 200; i++) out.upsert(0, `hostile.k${i}`, "x");
        out.upsert(0, "hostile.big", "x".repeat(64 << 10));
        return false;
      case "bad-index":
        out.replace(2 ** 32 - 2, "x");
        out.remove(attrs + 1_000_000);
        return false;
      default:
        return true;
    }
  }

  onRequest(attrs, out) {
    this.misbehave(out, attrs.length);
  }

  onDispatch(attrs, out) {
    this.misbehave(out, attrs.length);
  }

  onChild(attrs, out) {
    this.misbehave(out, attrs.length);
  }

  onSpans(batch, out) {
    this.misbehave(out.attrs, batch.attrs.length);
  }

  onLogs(batch, out) {
    this.misbehave(out.attrs, batch.attrs.length);
  }

  translate() {
    this.misbehave(new Edits(), 0);
    return null;
  }
}

export const { lifecycle, observeHooks, spanHooks, logHooks, errorHooks } = exportPlugin(Hostile);
