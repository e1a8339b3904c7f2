// What a plugin answers: sparse edits by index, checked by the daemon before it applies them.

/** A JS value as a WIT attribute value: a bigint is an `int`, a number a `double`. */
export function attrValue(v) {
  switch (typeof v) {
    case "string":
      return { tag: "str", val: v };
    case "boolean":
      return { tag: "boolean", val: v };
    case "bigint":
      return { tag: "int", val: v };
    case "number":
      return { tag: "double", val: v };
    default:
      throw new TypeError(`an attribute value is a string, boolean, bigint or number, not ${typeof v}`);
  }
}

/** Edits to the attributes a hook was given. */
export class Edits {
  constructor() {
    this.list = [];
  }

  replace(index, value) {
    this.list.push({ tag: "replace", val: [index, attrValue(value)] });
  }

  remove(index) {
    this.list.push({ tag: "remove", val: index });
  }

  upsert(record, key, value) {
    this.list.push({ tag: "upsert", val: [record, key, attrValue(value)] });
  }

  /** Replaces attribute `index` (whose text is `text`) with `****` and its last `keepLast`
   * characters. */
  mask(index, text, keepLast) {
    const chars = [...text];
    this.replace(index, "****" + (keepLast > 0 ? chars.slice(-keepLast).join("") : ""));
  }

  get length() {
    return this.list.length;
  }
}

export class SpanEdits {
  constructor() {
    this.attrs = new Edits();
    this.renames = [];
  }

  rename(span, name) {
    this.renames.push([span, name]);
  }
}

export class LogEdits {
  constructor() {
    this.attrs = new Edits();
    this.bodies = [];
    this.drops = [];
  }

  setBody(log, body) {
    this.bodies.push([log, body]);
  }

  drop(log) {
    this.drops.push(log);
  }
}
