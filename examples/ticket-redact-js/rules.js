// Redacts internal ticket ids (`OPS-1234`) and customer names from the spans and logs acpd
// exports: the rules of examples/ticket-redact, in JavaScript. Copy the directory, change the
// rules. `plugin.js` makes it a component; `rules.test.js` tests it natively.

import { ConfigError, PatternSet, Plugin, keyedHash } from "../../sdk/js/index.js";

const DEFAULT_TICKET_PATTERN = String.raw`\b[A-Z]{2,10}-\d{1,6}\b`;
const SETTINGS = new Set(["ticket_pattern", "customers", "hash_key"]);
const SPECIAL = new Set("\\.+*?()|[]{}^$#&-~");
const decoder = new TextDecoder();

/** Regex-escapes a literal name (Rust `regex` syntax). */
export function escape(s) {
  return [...s].map((c) => (SPECIAL.has(c) ? "\\" + c : c)).join("");
}

export class TicketRedact extends Plugin {
  static NAME = "ticket-redact";
  static VERSION = "0.1.0";

  /** Runs once per instance: validate the config and compile the patterns here, never per call. */
  constructor(config) {
    super(config);
    const unknown = Object.keys(config).filter((k) => !SETTINGS.has(k));
    if (unknown.length) throw new ConfigError(`unknown setting(s): ${unknown.sort().join(", ")}`);
    const patterns = [config.ticket_pattern ?? DEFAULT_TICKET_PATTERN];
    const customers = config.customers ?? [];
    if (customers.length) {
      patterns.push(String.raw`(?i)\b(?:` + customers.map((c) => escape(c.trim())).join("|") + String.raw`)\b`);
    }
    try {
      // Pattern 0: tickets; pattern 1 (if any customers): customer names.
      this.patterns = PatternSet.compile(patterns);
    } catch (e) {
      throw new ConfigError(`bad pattern: ${e.message}`);
    }
    this.hashKey = config.hash_key ?? null;
    if (this.hashKey !== null) {
      try {
        keyedHash(this.hashKey, "probe", 8);
      } catch (e) {
        throw new ConfigError(`hash_key ${JSON.stringify(this.hashKey)}: ${e.message}`);
      }
    }
  }

  replacement(pattern, text) {
    const label = pattern === 0 ? "ticket" : "customer";
    if (this.hashKey === null) return `[${label}]`;
    try {
      return `[${label}:${keyedHash(this.hashKey, text.toLowerCase(), 12)}]`;
    } catch {
      return `[${label}]`;
    }
  }

  /** One scan over many texts of a batch (one host call), then each changed text rebuilt:
   * `Map(range index -> new text)`. Offsets are UTF-8 bytes, so texts are cut from bytes. */
  redact(arena, ranges) {
    const byRange = new Map();
    for (const m of this.patterns.scan(arena.str, ranges)) {
      if (!byRange.has(m.range)) byRange.set(m.range, []);
      byRange.get(m.range).push(m);
    }
    const out = new Map();
    for (const [i, matches] of byRange) {
      const [o, n] = ranges[i];
      const text = arena.bytes.subarray(o, o + n);
      let s = "";
      let at = 0;
      for (const m of matches) {
        s += decoder.decode(text.subarray(at, m.start));
        s += this.replacement(m.pattern, decoder.decode(text.subarray(m.start, m.end)));
        at = m.end;
      }
      out.set(i, s + decoder.decode(text.subarray(at)));
    }
    return out;
  }

  onSpans(batch, out) {
    // Span names first, then every string attribute, in one scan.
    const ranges = [...batch.spans()].map((s) => s.nameRange);
    const names = ranges.length;
    const values = batch.attrs.valueRanges();
    ranges.push(...values.ranges);
    const indexes = values.indexes;
    for (const [i, text] of this.redact(batch.arena, ranges)) {
      if (i < names) out.rename(i, text);
      else out.attrs.replace(indexes[i - names], text);
    }
  }

  onLogs(batch, out) {
    const ranges = [...batch.logs()].map((l) => l.bodyRange);
    const bodies = ranges.length;
    const values = batch.attrs.valueRanges();
    ranges.push(...values.ranges);
    const indexes = values.indexes;
    for (const [i, text] of this.redact(batch.arena, ranges)) {
      if (i < bodies) out.setBody(i, text);
      else out.attrs.replace(indexes[i - bodies], text);
    }
  }
}
