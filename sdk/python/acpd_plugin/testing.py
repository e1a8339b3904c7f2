"""Test a plugin's logic natively (`python -m unittest`, no wasm): build the batches the
daemon would send, run the hook, and apply its edits the way the daemon does.

    b = Batch().span("fix OPS-1", {"note": "see OPS-2"})
    out = SpanEdits(); plugin.on_spans(b.spans_view(), out)
    assert b.apply_spans(out)[0] == ("fix [ticket]", {"note": "see [ticket]"})
"""

from dataclasses import dataclass

from . import _wit
from .views import LogBatch, SpanBatch


@dataclass
class _SpanRef:
    name: _wit.StrRef
    kind: int
    is_error: bool


@dataclass
class _LogRef:
    body: _wit.StrRef
    severity: int
    event_name: _wit.StrRef


@dataclass
class _Raw:
    arena: str
    spans: list
    logs: list
    attrs: list


class Batch:
    def __init__(self):
        self._arena = []
        self._len = 0
        self.refs = []
        self.values = []
        self.spans = []
        self.names = []
        self.logs = []
        self.bodies = []

    def _str(self, s: str) -> _wit.StrRef:
        b = len(s.encode("utf-8"))
        r = _wit.StrRef(self._len, b)
        self._arena.append(s)
        self._len += b
        return r

    def _attrs(self, record: int, attrs: dict):
        for k, v in attrs.items():
            key = self._str(k)
            if isinstance(v, str):
                value = _wit.ValueRef_Str(self._str(v))
            elif isinstance(v, bool):
                value = _wit.ValueRef_Boolean(v)
            elif isinstance(v, int):
                value = _wit.ValueRef_Int(v)
            else:
                value = _wit.ValueRef_Double(float(v))
            self.refs.append(_wit.AttrRef(record, key, value))
            self.values.append((record, k, v))

    def span(self, name: str, attrs: dict = None, kind: int = 0, is_error: bool = False):
        record = len(self.spans)
        self.spans.append(_SpanRef(self._str(name), kind, is_error))
        self.names.append(name)
        self._attrs(record, attrs or {})
        return self

    def log(self, body: str, event_name: str = "", attrs: dict = None, severity: int = 9):
        record = len(self.logs)
        self.logs.append(_LogRef(self._str(body), severity, self._str(event_name)))
        self.bodies.append(body)
        self._attrs(record, attrs or {})
        return self

    def _raw(self):
        return _Raw("".join(self._arena), self.spans, self.logs, self.refs)

    def spans_view(self) -> SpanBatch:
        return SpanBatch(self._raw())

    def logs_view(self) -> LogBatch:
        return LogBatch(self._raw())

    def _apply(self, edits, records: int):
        out = [dict() for _ in range(records)]
        for r, k, v in self.values:
            out[r][k] = v
        keys = [(r, k) for r, k, _ in self.values]
        removed = set()
        for e in edits.list:
            if isinstance(e, _wit.AttrEdit_Replace):
                i, v = e.value
                r, k = keys[i]
                out[r][k] = v.value
            elif isinstance(e, _wit.AttrEdit_Remove):
                removed.add(keys[e.value])
            else:
                r, k, v = e.value
                out[r][k] = v.value
        for r, k in removed:
            out[r].pop(k, None)
        return out

    def apply_spans(self, edits):
        """`[(name, {key: value})]` per span after `edits` (a SpanEdits)."""
        names = list(self.names)
        for i, n in edits.renames:
            names[i] = n
        return list(zip(names, self._apply(edits.attrs, len(self.spans))))

    def apply_logs(self, edits):
        """`[(body, {key: value}) or None if dropped]` per log after `edits` (a LogEdits)."""
        bodies = list(self.bodies)
        for i, b in edits.bodies:
            bodies[i] = b
        attrs = self._apply(edits.attrs, len(self.logs))
        return [None if i in edits.drops else (bodies[i], attrs[i]) for i in range(len(self.logs))]
