"""Redacts internal ticket ids (`OPS-1234`) and customer names from the spans and logs acpd
exports: the rules of examples/ticket-redact, in Python. Copy the directory, change the rules."""

import acpd_plugin
from acpd_plugin import ConfigError, PatternSet, Plugin, keyed_hash

DEFAULT_TICKET_PATTERN = r"\b[A-Z]{2,10}-\d{1,6}\b"
SETTINGS = {"ticket_pattern", "customers", "hash_key"}
SPECIAL = set("\\.+*?()|[]{}^$#&-~")


def escape(s: str) -> str:
    """Regex-escapes a literal name (Rust `regex` syntax)."""
    return "".join("\\" + c if c in SPECIAL else c for c in s)


@acpd_plugin.register
class TicketRedact(Plugin):
    NAME = "ticket-redact"
    VERSION = "0.1.0"

    def __init__(self, config: dict):
        """Runs once per instance: validate the config and compile the patterns here, never
        per call."""
        unknown = set(config) - SETTINGS
        if unknown:
            raise ConfigError(f"unknown setting(s): {', '.join(sorted(unknown))}")
        patterns = [config.get("ticket_pattern", DEFAULT_TICKET_PATTERN)]
        customers = config.get("customers", [])
        if customers:
            names = "|".join(escape(c.strip()) for c in customers)
            patterns.append(rf"(?i)\b(?:{names})\b")
        try:
            # Pattern 0: tickets; pattern 1 (if any customers): customer names.
            self.patterns = PatternSet.compile(patterns)
        except ValueError as e:
            raise ConfigError(f"bad pattern: {e}") from None
        self.hash_key = config.get("hash_key")
        if self.hash_key is not None:
            try:
                keyed_hash(self.hash_key, "probe", 8)
            except KeyError as e:
                raise ConfigError(f"hash_key {self.hash_key!r}: {e}") from None

    def replacement(self, pattern: int, text: str) -> str:
        label = "ticket" if pattern == 0 else "customer"
        if self.hash_key is None:
            return f"[{label}]"
        try:
            return f"[{label}:{keyed_hash(self.hash_key, text.lower(), 12)}]"
        except KeyError:
            return f"[{label}]"

    def redact(self, arena, ranges):
        """One scan over many texts of a batch (one host call), then each changed text rebuilt:
        `{range index: new text}`. Offsets are UTF-8 bytes, so texts are cut from bytes."""
        by_range = {}
        for m in self.patterns.scan(arena.str, ranges):
            by_range.setdefault(m.range, []).append(m)
        out = {}
        for i, matches in by_range.items():
            o, n = ranges[i]
            text = arena.bytes[o : o + n]
            parts, at = [], 0
            for m in matches:
                parts.append(text[at : m.start].decode())
                parts.append(self.replacement(m.pattern, text[m.start : m.end].decode()))
                at = m.end
            parts.append(text[at:].decode())
            out[i] = "".join(parts)
        return out

    def on_spans(self, batch, out):
        # Span names first, then every string attribute, in one scan.
        ranges = [s.name_range for s in batch.spans()]
        names = len(ranges)
        indexes = []
        for a in batch.attrs:
            r = a.value_range
            if r is not None:
                ranges.append(r)
                indexes.append(a.index)
        for i, new in self.redact(batch.arena, ranges).items():
            if i < names:
                out.rename(i, new)
            else:
                out.attrs.replace(indexes[i - names], new)

    def on_logs(self, batch, out):
        ranges = [l.body_range for l in batch.logs()]
        bodies = len(ranges)
        indexes = []
        for a in batch.attrs:
            r = a.value_range
            if r is not None:
                ranges.append(r)
                indexes.append(a.index)
        for i, new in self.redact(batch.arena, ranges).items():
            if i < bodies:
                out.set_body(i, new)
            else:
                out.attrs.replace(indexes[i - bodies], new)


# The component's exports (world `redactor`: lifecycle, span hooks, log hooks).
from acpd_plugin.exports import Lifecycle, LogHooks, SpanHooks  # noqa: E402,F401
