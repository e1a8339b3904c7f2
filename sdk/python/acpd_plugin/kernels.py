"""The host kernels: pattern sets (regexes compiled once and run natively by the daemon) and
keyed hashes (HMAC under a key the plugin never sees). Outside a component (native tests) they
are emulated: Python `re` for the patterns, and for keys `ACPD_SDK_TEST_KEY_<ID>` from the
environment, else the id itself, as the Rust SDK does."""

import hashlib
import hmac
import os
import re
from collections import namedtuple

from . import _wit

Match = namedtuple("Match", "pattern start end")
RangeMatch = namedtuple("RangeMatch", "range pattern start end")

if _wit.IN_COMPONENT:
    from componentize_py_types import Err
    from wit_world.imports import host as _host


class PatternSet:
    """Regexes (Rust `regex` syntax) compiled once by the host. Offsets are UTF-8 bytes."""

    def __init__(self, impl):
        self._impl = impl

    @classmethod
    def compile(cls, patterns):
        """Raises `ValueError` naming the first invalid pattern."""
        patterns = list(patterns)
        if _wit.IN_COMPONENT:
            try:
                return cls(_host.PatternSet.compile(patterns))
            except Err as e:
                raise ValueError(e.value) from None
        return cls(_NativeSet(patterns))

    def find(self, text: str):
        """Leftmost-first, non-overlapping matches of any pattern in `text`."""
        return [Match(m.pattern, m.start, m.end) for m in self._impl.find(text)]

    def scan(self, arena: str, ranges):
        """`find` over many `(offset, length)` slices of one arena in one call; offsets in the
        result are relative to their range."""
        return self._impl.scan(arena, list(ranges))


class _NativeSet:
    def __init__(self, patterns):
        self._res = []
        for i, p in enumerate(patterns):
            try:
                self._res.append(re.compile(p.encode("utf-8")))
            except re.error as e:
                raise ValueError(f"pattern {i}: {e}") from None

    def _find(self, data: bytes):
        out, at = [], 0
        while at <= len(data):
            best = None
            for i, r in enumerate(self._res):
                m = r.search(data, at)
                if m and (best is None or m.start() < best[1]):
                    best = (i, m.start(), m.end())
            if best is None:
                break
            out.append(Match(*best))
            at = best[2] if best[2] > best[1] else best[2] + 1
        return out

    def find(self, text):
        return self._find(text.encode("utf-8"))

    def scan(self, arena, ranges):
        data = arena.encode("utf-8")
        out = []
        for i, (o, n) in enumerate(ranges):
            for m in self._find(data[o : o + n]):
                out.append(RangeMatch(i, m.pattern, m.start, m.end))
        return out


def keyed_hash(key_id: str, data: str, hex_len: int = 0) -> str:
    """HMAC-SHA256 of `data` under the operator's key `key_id`, as lowercase hex cut to
    `hex_len` characters (0 = all 64). Raises `KeyError` for an unknown key id."""
    if _wit.IN_COMPONENT:
        try:
            return _host.keyed_hash(key_id, data, hex_len)
        except Err as e:
            raise KeyError(e.value) from None
    key = os.environ.get("ACPD_SDK_TEST_KEY_" + key_id.upper().replace("-", "_"), key_id)
    h = hmac.new(key.encode(), data.encode(), hashlib.sha256).hexdigest()
    return h[:hex_len] if 0 < hex_len < len(h) else h


def count(name: str, delta: int = 1):
    """Adds `delta` to the plugin's counter `name` (metric `acpd.plugin.custom`)."""
    if _wit.IN_COMPONENT:
        _host.count(name, delta)


_LEVELS = ("trace", "debug", "info", "warn", "error")


def log(level: str, message: str):
    """Logged by the daemon as `acpd.plugin.log`, tagged with the plugin's name."""
    if _wit.IN_COMPONENT:
        _host.log(_host.Level(_LEVELS.index(level)), message)
    else:
        print(f"[{level}] {message}")
