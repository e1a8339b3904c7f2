// Test a plugin's logic natively (`node --test`, no wasm): an emulated host (JS RegExp for
// pattern sets, HMAC from node:crypto with the key `ACPD_SDK_TEST_KEY_<ID>` from the
// environment, else the id itself, as the Rust SDK does), and batches packed the way the
// daemon packs them, with their edits applied the way the daemon applies them.
//
//   const b = new Batch().span("fix OPS-1", { note: "see OPS-2" });
//   const out = new SpanEdits(); plugin.onSpans(b.spansView(), out);
//   b.applySpans(out) // [["fix [ticket]", { note: "see [ticket]" }]]

import { createHmac } from "node:crypto";
import { useHost } from "./kernels.js";
import { LogBatch, SpanBatch } from "./views.js";

const encoder = new TextEncoder();
const decoder = new TextDecoder();
const utf8len = (s) => encoder.encode(s).length;

/** Rust's leading `(?i)` as a JS flag; the rest of the common syntax is shared. */
function jsRegExp(p) {
  let flags = "gu";
  if (p.startsWith("(?i)")) {
    flags += "i";
    p = p.slice(4);
  }
  return new RegExp(p, flags);
}

class NativeSet {
  constructor(patterns) {
    this.res = patterns.map((p, i) => {
      try {
        return jsRegExp(p);
      } catch (e) {
        throw { payload: `pattern ${i}: ${e.message}` };
      }
    });
  }

  find(text) {
    const out = [];
    let at = 0;
    while (at <= text.length) {
      let best = null;
      this.res.forEach((r, i) => {
        r.lastIndex = at;
        const m = r.exec(text);
        if (m && (best === null || m.index < best[1])) best = [i, m.index, m.index + m[0].length];
      });
      if (best === null) break;
      const [pattern, s, e] = best;
      out.push({ pattern, start: utf8len(text.slice(0, s)), end: utf8len(text.slice(0, e)) });
      at = e > s ? e : e + 1;
    }
    return out;
  }

  scan(arena, ranges) {
    const bytes = encoder.encode(arena);
    const out = [];
    ranges.forEach(([o, n], range) => {
      for (const m of this.find(decoder.decode(bytes.subarray(o, o + n)))) out.push({ range, ...m });
    });
    return out;
  }
}

useHost({
  PatternSet: { compile: (patterns) => new NativeSet(patterns) },
  keyedHash(keyId, data, hexLen) {
    const key = process.env["ACPD_SDK_TEST_KEY_" + keyId.toUpperCase().replaceAll("-", "_")] ?? keyId;
    const h = createHmac("sha256", key).update(data).digest("hex");
    return hexLen > 0 && hexLen < h.length ? h.slice(0, hexLen) : h;
  },
  count() {},
  log(level, message) {
    console.error(`[${level}] ${message}`);
  },
});

export class Batch {
  constructor() {
    this.arena = "";
    this.len = 0;
    this.refs = [];
    this.values = [];
    this.spans = [];
    this.names = [];
    this.logs = [];
    this.bodies = [];
  }

  _str(s) {
    const r = { offset: this.len, len: utf8len(s) };
    this.arena += s;
    this.len += r.len;
    return r;
  }

  _attrs(record, attrs) {
    for (const [k, v] of Object.entries(attrs)) {
      const key = this._str(k);
      let value;
      if (typeof v === "string") value = { tag: "str", val: this._str(v) };
      else if (typeof v === "boolean") value = { tag: "boolean", val: v };
      else if (typeof v === "bigint") value = { tag: "int", val: v };
      else value = { tag: "double", val: v };
      this.refs.push({ record, key, value });
      this.values.push([record, k, v]);
    }
  }

  span(name, attrs = {}, { kind = "internal", isError = false } = {}) {
    const record = this.spans.length;
    this.spans.push({ name: this._str(name), kind, isError });
    this.names.push(name);
    this._attrs(record, attrs);
    return this;
  }

  log(body, eventName = "", attrs = {}, severity = 9) {
    const record = this.logs.length;
    this.logs.push({ body: this._str(body), severity, eventName: this._str(eventName) });
    this.bodies.push(body);
    this._attrs(record, attrs);
    return this;
  }

  _raw() {
    return { arena: this.arena, spans: this.spans, logs: this.logs, attrs: this.refs };
  }

  spansView() {
    return new SpanBatch(this._raw());
  }

  logsView() {
    return new LogBatch(this._raw());
  }

  _apply(edits, records) {
    const out = Array.from({ length: records }, () => ({}));
    for (const [r, k, v] of this.values) out[r][k] = v;
    const removed = [];
    for (const e of edits.list) {
      if (e.tag === "replace") {
        const [i, v] = e.val;
        const [r, k] = this.values[i];
        out[r][k] = v.val;
      } else if (e.tag === "remove") {
        removed.push(this.values[e.val]);
      } else {
        const [r, k, v] = e.val;
        out[r][k] = v.val;
      }
    }
    for (const [r, k] of removed) delete out[r][k];
    return out;
  }

  /** `[[name, {key: value}]]` per span after `edits` (a SpanEdits). */
  applySpans(edits) {
    const names = [...this.names];
    for (const [i, n] of edits.renames) names[i] = n;
    const attrs = this._apply(edits.attrs, this.spans.length);
    return names.map((n, i) => [n, attrs[i]]);
  }

  /** `[[body, {key: value}] | null if dropped]` per log after `edits` (a LogEdits). */
  applyLogs(edits) {
    const bodies = [...this.bodies];
    for (const [i, b] of edits.bodies) bodies[i] = b;
    const attrs = this._apply(edits.attrs, this.logs.length);
    return bodies.map((b, i) => (edits.drops.includes(i) ? null : [b, attrs[i]]));
  }
}
