"""A hostile Python plugin for the tests (tests/tests/plugins_polyglot.rs): its config's `mode`
picks the misbehaviour, at every hook, as tests/plugins/hostile does in Rust:
`exception` (an uncaught exception), `loop`, `alloc` (1 GiB), `huge-output`, `bad-index`,
`bad-config`, `ok`; or `none`, which asks for no call at all (`Selector.none()`)."""

import acpd_plugin
from acpd_plugin import ConfigError, Plugin, Selector

MODES = {"exception", "loop", "alloc", "huge-output", "bad-index", "bad-config", "ok", "none"}


@acpd_plugin.register
class Hostile(Plugin):
    NAME = "hostile-py"
    VERSION = "0.1.0"

    def __init__(self, config):
        self.mode = config.get("mode", "ok")
        if self.mode not in MODES or self.mode == "bad-config":
            raise ConfigError(f"unknown mode {self.mode!r}")
        self.hoard = []

    def selectors(self):
        return [Selector.none()] if self.mode == "none" else []

    def misbehave(self, out, attrs: int) -> bool:
        """`True` = go on with the hook's own answer."""
        if self.mode == "exception":
            raise RuntimeError("hostile: raising on purpose")
        if self.mode == "loop":
            x = 0
            while True:
                x += 1
        if self.mode == "alloc":
            self.hoard.append(bytearray(1 << 30))
        if self.mode == "huge-output":
            for i in range(200):
                out.upsert(0, f"hostile.k{i}", "x")
            out.upsert(0, "hostile.big", "x" * (64 << 10))
            return False
        if self.mode == "bad-index":
            out.replace(2**32 - 2, "x")
            out.remove(attrs + 1_000_000)
            return False
        return True

    def on_request(self, attrs, out):
        self.misbehave(out, len(attrs))

    def on_dispatch(self, attrs, out):
        self.misbehave(out, len(attrs))

    def on_child(self, attrs, out):
        self.misbehave(out, len(attrs))

    def on_spans(self, batch, out):
        self.misbehave(out.attrs, len(batch.attrs))

    def on_logs(self, batch, out):
        self.misbehave(out.attrs, len(batch.attrs))

    def translate(self, err):
        self.misbehave(acpd_plugin.Edits(), 0)
        return None


from acpd_plugin.exports import (  # noqa: E402,F401
    ErrorHooks,
    Lifecycle,
    LogHooks,
    ObserveHooks,
    SpanHooks,
)
