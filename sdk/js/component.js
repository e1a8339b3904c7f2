// The component's side of the SDK: the daemon's host kernels, and the exports that forward to
// the plugin class. The entry module of a plugin imports `exportPlugin` from here and exports
// what it returns for its world's interfaces:
//
//   export const { lifecycle, spanHooks, logHooks } = exportPlugin(MyPlugin);
//
// A `PluginError` becomes the hook's `plugin-error`; any other exception is logged to the
// daemon with its stack and traps the instance (as a Rust panic does).

import * as host from "acpd:plugin/host@0.1.0";
import { LogEdits, SpanEdits, Edits } from "./edits.js";
import { useHost } from "./kernels.js";
import { Attrs, Arena, LogBatch, SpanBatch } from "./views.js";
import { ConfigError, PluginError, parseConfig } from "./index.js";

useHost(host);

/** A trap: what wasm's `unreachable` does, which a thrown non-`plugin-error` value may not. */
function trap(e) {
  try {
    host.log("error", `exception: ${e?.name ?? "throw"}: ${e?.message ?? e}\n${e?.stack ?? ""}`.slice(0, 2000));
  } catch {}
  // An unreachable instruction is the one way out of a component that always traps.
  throw new WebAssembly.RuntimeError(`plugin exception: ${e?.message ?? e}`);
}

function call(f) {
  try {
    return f();
  } catch (e) {
    if (e instanceof ConfigError) throw { tag: "invalid-config", val: e.message };
    if (e instanceof PluginError) throw { tag: "failed", val: e.message };
    trap(e);
  }
}

export function exportPlugin(Cls) {
  let plugin = null;
  const get = () => {
    if (plugin === null) throw new PluginError("hook called before init");
    return plugin;
  };
  const observe = (name, arena, attrs) =>
    call(() => {
      const out = new Edits();
      const p = get();
      if (p[name]) p[name](new Attrs(new Arena(arena), attrs), out);
      return out.list;
    });
  return {
    lifecycle: {
      init(configJson) {
        return call(() => {
          plugin = new Cls(parseConfig(configJson));
          return { name: Cls.NAME, version: Cls.VERSION, selectors: plugin.selectors() };
        });
      },
    },
    observeHooks: {
      onRequest: (arena, attrs) => observe("onRequest", arena, attrs),
      onDispatch: (arena, attrs) => observe("onDispatch", arena, attrs),
      onChild: (arena, attrs) => observe("onChild", arena, attrs),
    },
    spanHooks: {
      onSpans(batch) {
        return call(() => {
          const out = new SpanEdits();
          const p = get();
          if (p.onSpans) p.onSpans(new SpanBatch(batch), out);
          return { attrs: out.attrs.list, renames: out.renames };
        });
      },
    },
    logHooks: {
      onLogs(batch) {
        return call(() => {
          const out = new LogEdits();
          const p = get();
          if (p.onLogs) p.onLogs(new LogBatch(batch), out);
          return { attrs: out.attrs.list, bodies: out.bodies, drops: out.drops };
        });
      },
    },
    errorHooks: {
      translate(err) {
        return call(() => {
          const p = get();
          if (!p.translate) return undefined;
          const r = p.translate({
            surface: err.surface,
            code: err.code,
            status: err.status,
            message: err.message,
            retryAfter: err.retryAfter,
            context: JSON.parse(err.contextJson || "{}"),
            rpcCode: err.rpcCode,
          });
          if (r == null) return undefined;
          return {
            status: r.status,
            code: r.code,
            message: r.message,
            retryable: Boolean(r.retryable),
            retryAfter: r.retryAfter,
          };
        });
      },
    },
  };
}
