// Views over what the daemon sends: one arena string and entries pointing into it.
//
// Offsets in the arena are UTF-8 byte offsets (what the host kernels take and return); a JS
// string counts UTF-16 units, so text is cut from the arena's bytes. An all-ASCII arena (the
// common case) is sliced directly.

const ASCII = /^[\x00-\x7f]*$/;
const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** The call's arena: `text(offset, length)` decodes a byte range. */
export class Arena {
  constructor(str) {
    this.str = str;
    this.ascii = ASCII.test(str);
    this._bytes = null;
  }

  /** The arena as UTF-8 bytes (encoded once, when first needed). */
  get bytes() {
    if (this._bytes === null) this._bytes = encoder.encode(this.str);
    return this._bytes;
  }

  text(offset, length) {
    if (this.ascii) return this.str.slice(offset, offset + length);
    return decoder.decode(this.bytes.subarray(offset, offset + length));
  }
}

/**
 * One attribute. `index` is what edits refer to; `record` is the span or log it belongs to.
 * `value` is a string, boolean, bigint (`int`), number (`double`), or for arrays their JSON.
 */
export class Attr {
  constructor(index, arena, ref) {
    this.index = index;
    this.record = ref.record;
    this._arena = arena;
    this._ref = ref;
  }

  get key() {
    const k = this._ref.key;
    return this._arena.text(k.offset, k.len);
  }

  get value() {
    const v = this._ref.value;
    if (v.tag === "str" || v.tag === "array") return this._arena.text(v.val.offset, v.val.len);
    return v.val;
  }

  get isArray() {
    return this._ref.value.tag === "array";
  }

  /** `[offset, length]` of a string or array value in the arena (what `PatternSet.scan`
   * takes); null for numbers and booleans. */
  get valueRange() {
    const v = this._ref.value;
    return v.tag === "str" || v.tag === "array" ? [v.val.offset, v.val.len] : null;
  }
}

/** A set of attributes: a whole batch, or one record of it. */
export class Attrs {
  constructor(arena, refs, start = 0, end = refs.length) {
    this.arena = arena;
    this._refs = refs;
    this._start = start;
    this._end = end;
  }

  get length() {
    return this._end - this._start;
  }

  *[Symbol.iterator]() {
    for (let i = this._start; i < this._end; i++) yield new Attr(i, this.arena, this._refs[i]);
  }

  /** `{ranges, indexes}`: the `[offset, length]` of every string or array value (what
   * `PatternSet.scan` takes) and the attribute index of each, in one pass without an `Attr`
   * per attribute (the fast path for scanning a whole batch). */
  valueRanges() {
    const ranges = [];
    const indexes = [];
    const refs = this._refs;
    for (let i = this._start; i < this._end; i++) {
      const v = refs[i].value;
      if (v.tag === "str" || v.tag === "array") {
        ranges.push([v.val.offset, v.val.len]);
        indexes.push(i);
      }
    }
    return { ranges, indexes };
  }

  /** The first attribute named `key`, or undefined. */
  find(key) {
    for (const a of this) if (a.key === key) return a;
    return undefined;
  }

  get(key) {
    return this.find(key)?.value;
  }

  /** Attributes whose key starts with `prefix` (e.g. `http.request.header.`). */
  withPrefix(prefix) {
    return [...this].filter((a) => a.key.startsWith(prefix));
  }
}

/** Where each record's attributes are: the daemon sends a record's attributes together. */
function recordRanges(refs, records) {
  const ranges = new Array(records).fill([0, 0]);
  let i = 0;
  while (i < refs.length) {
    const r = refs[i].record;
    const start = i;
    while (i < refs.length && refs[i].record === r) i++;
    if (r < records) ranges[r] = [start, i];
  }
  return ranges;
}

export class SpanView {
  constructor(index, meta, arena, attrs) {
    this.index = index;
    this._meta = meta;
    this._arena = arena;
    this.attrs = attrs;
  }

  get name() {
    return this._arena.text(this._meta.name.offset, this._meta.name.len);
  }

  /** `[offset, length]` of the name in the arena. */
  get nameRange() {
    return [this._meta.name.offset, this._meta.name.len];
  }

  /** `internal`, `server`, `client`, `producer` or `consumer`. */
  get kind() {
    return this._meta.kind;
  }

  get isError() {
    return this._meta.isError;
  }
}

/** An export batch of spans. */
export class SpanBatch {
  constructor(raw) {
    this.arena = new Arena(raw.arena);
    this._spans = raw.spans;
    this.attrs = new Attrs(this.arena, raw.attrs);
    this._ranges = recordRanges(raw.attrs, raw.spans.length);
  }

  get length() {
    return this._spans.length;
  }

  *spans() {
    for (let i = 0; i < this._spans.length; i++) {
      const [s, e] = this._ranges[i];
      yield new SpanView(i, this._spans[i], this.arena, new Attrs(this.arena, this.attrs._refs, s, e));
    }
  }
}

export class LogView {
  constructor(index, meta, arena, attrs) {
    this.index = index;
    this._meta = meta;
    this._arena = arena;
    this.attrs = attrs;
  }

  get body() {
    return this._arena.text(this._meta.body.offset, this._meta.body.len);
  }

  /** `[offset, length]` of the body in the arena. */
  get bodyRange() {
    return [this._meta.body.offset, this._meta.body.len];
  }

  /** OpenTelemetry severity number (1-24; 0 = unset). */
  get severity() {
    return this._meta.severity;
  }

  get eventName() {
    return this._arena.text(this._meta.eventName.offset, this._meta.eventName.len);
  }
}

/** An export batch of log records. */
export class LogBatch {
  constructor(raw) {
    this.arena = new Arena(raw.arena);
    this._logs = raw.logs;
    this.attrs = new Attrs(this.arena, raw.attrs);
    this._ranges = recordRanges(raw.attrs, raw.logs.length);
  }

  get length() {
    return this._logs.length;
  }

  *logs() {
    for (let i = 0; i < this._logs.length; i++) {
      const [s, e] = this._ranges[i];
      yield new LogView(i, this._logs[i], this.arena, new Attrs(this.arena, this.attrs._refs, s, e));
    }
  }
}
