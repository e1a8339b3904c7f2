// The rules, tested natively: `node --test examples/ticket-redact-js/` (README).
import "../../sdk/js/testing.js";
import assert from "node:assert/strict";
import { test } from "node:test";
import { ConfigError, LogEdits, SpanEdits } from "../../sdk/js/index.js";
import { Batch } from "../../sdk/js/testing.js";
import { TicketRedact } from "./rules.js";

test("tickets and customers leave spans and logs", () => {
  const p = new TicketRedact({ customers: ["Acme Corp", "Globex"] });
  const b = new Batch().span("fix OPS-1234", { "gen_ai.input.messages": "acme corp asks about OPS-77", n: 7n });
  const e = new SpanEdits();
  p.onSpans(b.spansView(), e);
  const [[name, attrs]] = b.applySpans(e);
  assert.equal(name, "fix [ticket]");
  assert.equal(attrs["gen_ai.input.messages"], "[customer] asks about [ticket]");
  assert.equal(attrs.n, 7n);

  const l = new Batch().log("Globex reopened SEC-9", "acpd.child.stderr");
  const le = new LogEdits();
  p.onLogs(l.logsView(), le);
  assert.equal(l.applyLogs(le)[0][0], "[customer] reopened [ticket]");
});

test("offsets are UTF-8 bytes, not UTF-16 units", () => {
  const p = new TicketRedact({ customers: ["Globex"] });
  const b = new Batch().span("café ☕ OPS-1", { x: "naïve Globex über OPS-22 ✓ 😀" });
  const e = new SpanEdits();
  p.onSpans(b.spansView(), e);
  const [[name, attrs]] = b.applySpans(e);
  assert.equal(name, "café ☕ [ticket]");
  assert.equal(attrs.x, "naïve [customer] über [ticket] ✓ 😀");
});

test("hashes keep the same ticket recognisable", () => {
  const p = new TicketRedact({ hash_key: "pii" });
  const b = new Batch().span("a", { x: "OPS-1", y: "see OPS-1" });
  const e = new SpanEdits();
  p.onSpans(b.spansView(), e);
  const attrs = b.applySpans(e)[0][1];
  assert.ok(attrs.x.startsWith("[ticket:"), attrs.x);
  assert.equal(attrs.y, "see " + attrs.x);
});

test("a bad pattern is refused at init", () => {
  assert.throws(() => new TicketRedact({ ticket_pattern: "(" }), ConfigError);
});

test("an unknown setting is refused", () => {
  assert.throws(() => new TicketRedact({ customer: ["typo"] }), ConfigError);
});
