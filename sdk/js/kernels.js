// The host kernels: pattern sets (regexes compiled once and run natively by the daemon) and
// keyed hashes (HMAC under a key the plugin never sees). Which host serves them is installed
// by the entry: `component.js` (the daemon's, inside a component) or `testing.js` (emulated,
// for `node --test`).

let host = null;

export function useHost(h) {
  host = h;
}

function theHost() {
  if (host === null) {
    throw new Error("no acpd host: import acpd-plugin/component.js (component) or testing.js (tests)");
  }
  return host;
}

/** Regexes (Rust `regex` syntax) compiled once by the host. Offsets are UTF-8 bytes. */
export class PatternSet {
  constructor(impl) {
    this._impl = impl;
  }

  /** Throws an Error naming the first invalid pattern. */
  static compile(patterns) {
    try {
      return new PatternSet(theHost().PatternSet.compile([...patterns]));
    } catch (e) {
      throw new Error(typeof e?.payload === "string" ? e.payload : String(e?.message ?? e));
    }
  }

  /** Leftmost-first, non-overlapping matches of any pattern in `text`:
   * `[{pattern, start, end}]`. */
  find(text) {
    return this._impl.find(text);
  }

  /** `find` over many `[offset, length]` slices of one arena in one call:
   * `[{range, pattern, start, end}]`, offsets relative to their range. */
  scan(arena, ranges) {
    return this._impl.scan(arena, ranges);
  }
}

/** HMAC-SHA256 of `data` under the operator's key `keyId`, lowercase hex cut to `hexLen`
 * characters (0 = all 64). Throws for an unknown key id. */
export function keyedHash(keyId, data, hexLen = 0) {
  try {
    return theHost().keyedHash(keyId, data, hexLen);
  } catch (e) {
    throw new Error(typeof e?.payload === "string" ? e.payload : String(e?.message ?? e));
  }
}

/** Adds `delta` to the plugin's counter `name` (metric `acpd.plugin.custom`). */
export function count(name, delta = 1n) {
  theHost().count(name, BigInt(delta));
}

/** Logged by the daemon as `acpd.plugin.log`, tagged with the plugin's name. `level`:
 * trace, debug, info, warn, error. */
export function log(level, message) {
  theHost().log(level, message);
}
