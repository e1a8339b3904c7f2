"""Views over what the daemon sends: one arena string and entries pointing into it.

Offsets in the arena are UTF-8 byte offsets (what the host kernels take and return); a Python
str counts code points, so text is cut from the arena's bytes. An all-ASCII arena (the common
case) is sliced directly."""

from . import _wit


class Arena:
    """The call's arena: `text(offset, length)` decodes a byte range."""

    __slots__ = ("str", "_bytes", "_ascii")

    def __init__(self, arena: str):
        self.str = arena
        self._bytes = None
        self._ascii = arena.isascii()

    @property
    def bytes(self) -> bytes:
        if self._bytes is None:
            self._bytes = self.str.encode("utf-8")
        return self._bytes

    def text(self, offset: int, length: int) -> str:
        if self._ascii:
            return self.str[offset : offset + length]
        return self.bytes[offset : offset + length].decode("utf-8", "replace")


class Attr:
    """One attribute. `index` is what edits refer to; `record` is the span or log it belongs to.
    `value` is a str, bool, int, float, or for array values their JSON text (`is_array`)."""

    __slots__ = ("index", "record", "_arena", "_ref")

    def __init__(self, index: int, arena: Arena, ref):
        self.index = index
        self.record = ref.record
        self._arena = arena
        self._ref = ref

    @property
    def key(self) -> str:
        k = self._ref.key
        return self._arena.text(k.offset, k.len)

    @property
    def value(self):
        v = self._ref.value
        if isinstance(v, (_wit.ValueRef_Str, _wit.ValueRef_Array)):
            return self._arena.text(v.value.offset, v.value.len)
        return v.value

    @property
    def is_array(self) -> bool:
        return isinstance(self._ref.value, _wit.ValueRef_Array)

    @property
    def value_range(self):
        """`(offset, length)` of a string or array value in the arena: what
        `PatternSet.scan` takes. None for numbers and booleans."""
        v = self._ref.value
        if isinstance(v, (_wit.ValueRef_Str, _wit.ValueRef_Array)):
            return (v.value.offset, v.value.len)
        return None

    def __repr__(self):
        return f"Attr({self.index}, record={self.record}, {self.key!r}={self.value!r})"


class Attrs:
    """A set of attributes: a whole batch, or one record of it."""

    def __init__(self, arena: Arena, refs, start: int = 0, end=None):
        self.arena = arena
        self._refs = refs
        self._start = start
        self._end = len(refs) if end is None else end

    def __len__(self):
        return self._end - self._start

    def __iter__(self):
        arena, refs = self.arena, self._refs
        for i in range(self._start, self._end):
            yield Attr(i, arena, refs[i])

    def find(self, key: str):
        """The first attribute named `key`, or None."""
        for a in self:
            if a.key == key:
                return a
        return None

    def get(self, key: str, default=None):
        a = self.find(key)
        return default if a is None else a.value

    def with_prefix(self, prefix: str):
        """Attributes whose key starts with `prefix` (e.g. `http.request.header.`)."""
        return [a for a in self if a.key.startswith(prefix)]


def _record_ranges(refs, records: int):
    """Where each record's attributes are: the daemon sends a record's attributes together."""
    ranges = [(0, 0)] * records
    i, n = 0, len(refs)
    while i < n:
        r = refs[i].record
        start = i
        while i < n and refs[i].record == r:
            i += 1
        if r < records:
            ranges[r] = (start, i)
    return ranges


SPAN_KINDS = ("internal", "server", "client", "producer", "consumer")


class SpanView:
    def __init__(self, index: int, meta, arena: Arena, attrs: Attrs):
        self.index = index
        self._meta = meta
        self._arena = arena
        self.attrs = attrs

    @property
    def name(self) -> str:
        n = self._meta.name
        return self._arena.text(n.offset, n.len)

    @property
    def name_range(self):
        """`(offset, length)` of the name in the arena."""
        return (self._meta.name.offset, self._meta.name.len)

    @property
    def kind(self) -> str:
        """`internal`, `server`, `client`, `producer` or `consumer`."""
        k = self._meta.kind
        return SPAN_KINDS[k.value if hasattr(k, "value") else k]

    @property
    def is_error(self) -> bool:
        return self._meta.is_error


class SpanBatch:
    """An export batch of spans."""

    def __init__(self, raw):
        self.arena = Arena(raw.arena)
        self._spans = raw.spans
        self.attrs = Attrs(self.arena, raw.attrs)
        self._ranges = _record_ranges(raw.attrs, len(raw.spans))

    def __len__(self):
        return len(self._spans)

    def spans(self):
        for i, m in enumerate(self._spans):
            s, e = self._ranges[i]
            yield SpanView(i, m, self.arena, Attrs(self.arena, self.attrs._refs, s, e))


class LogView:
    def __init__(self, index: int, meta, arena: Arena, attrs: Attrs):
        self.index = index
        self._meta = meta
        self._arena = arena
        self.attrs = attrs

    @property
    def body(self) -> str:
        b = self._meta.body
        return self._arena.text(b.offset, b.len)

    @property
    def body_range(self):
        """`(offset, length)` of the body in the arena."""
        return (self._meta.body.offset, self._meta.body.len)

    @property
    def severity(self) -> int:
        """OpenTelemetry severity number (1-24; 0 = unset)."""
        return self._meta.severity

    @property
    def event_name(self) -> str:
        e = self._meta.event_name
        return self._arena.text(e.offset, e.len)


class LogBatch:
    """An export batch of log records."""

    def __init__(self, raw):
        self.arena = Arena(raw.arena)
        self._logs = raw.logs
        self.attrs = Attrs(self.arena, raw.attrs)
        self._ranges = _record_ranges(raw.attrs, len(raw.logs))

    def __len__(self):
        return len(self._logs)

    def logs(self):
        for i, m in enumerate(self._logs):
            s, e = self._ranges[i]
            yield LogView(i, m, self.arena, Attrs(self.arena, self.attrs._refs, s, e))
