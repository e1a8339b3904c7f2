// Write acpd plugins in JavaScript: a plugin is a class with a constructor taking its config
// (validated once) and the hook methods of the roles it plays; `exportPlugin` (component.js)
// turns it into the component's exports. See sdk/js/README.md.

export { Arena, Attr, Attrs, LogBatch, LogView, SpanBatch, SpanView } from "./views.js";
export { Edits, LogEdits, SpanEdits, attrValue } from "./edits.js";
export { PatternSet, count, keyedHash, log } from "./kernels.js";

/** This call failed: the daemon applies the hook's failure policy. Any other exception traps
 * the instance, as a Rust panic does. */
export class PluginError extends Error {}

/** The operator's config is unusable: the plugin is not activated. */
export class ConfigError extends PluginError {}

export const HOOKS = ["request", "dispatch", "child", "export-spans", "export-logs", "error"];

/** What the plugin wants to see: hooks (names in `HOOKS`), keys (exact or `prefix.*`), keys a
 * record must carry for the call to happen. Empty = everything. */
export function selector({ hooks = [], keys = [], requireAny = [] } = {}) {
  for (const h of hooks) {
    if (!HOOKS.includes(h)) throw new Error(`unknown hook ${JSON.stringify(h)} (one of ${HOOKS.join(", ")})`);
  }
  return { hooks, keys, requireAny };
}

/** No call at any hook, for a plugin with nothing to do under its config (an empty list of
 * selectors means every hook): `requireAny` holding only the empty key, which never matches. */
selector.none = () => selector({ requireAny: [""] });

/**
 * Base class. Set static `NAME` and `VERSION`; take the config in the constructor and
 * implement the hooks of the roles the plugin plays:
 *
 * - `onRequest / onDispatch / onChild(attrs, out: Edits)` (world `observer`)
 * - `onSpans(batch: SpanBatch, out: SpanEdits)` (world `span-processor` or `redactor`)
 * - `onLogs(batch: LogBatch, out: LogEdits)` (world `log-processor` or `redactor`)
 * - `translate(err) -> {status, code, message, retryable, retryAfter} | null`
 *   (world `error-translator`)
 *
 * One instance lives as long as its component instance: build rules in the constructor,
 * never per call.
 */
export class Plugin {
  static NAME = "plugin";
  static VERSION = "0.0.0";

  constructor(config) {
    this.config = config;
  }

  selectors() {
    return [];
  }
}

/** The operator's `[plugins.config]` as an object (empty text = `{}`). */
export function parseConfig(text) {
  if (!text.trim()) return {};
  let v;
  try {
    v = JSON.parse(text);
  } catch (e) {
    throw new ConfigError(`config is not JSON: ${e.message}`);
  }
  if (v === null) return {};
  if (typeof v !== "object" || Array.isArray(v)) throw new ConfigError("config is not a table");
  return v;
}
