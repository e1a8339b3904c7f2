"""Write acpd plugins in Python: a plugin is a class with `init` (its config, validated once)
and the hook methods of the roles it plays; `acpd_plugin.exports` turns it into the
component's exports. See sdk/python/README.md."""

import json

from . import _wit
from .edits import Edits, LogEdits, SpanEdits
from .errors import ConfigError, Error
from .kernels import Match, PatternSet, RangeMatch, count, keyed_hash, log
from .views import Attr, Attrs, LogBatch, LogView, SpanBatch, SpanView

__all__ = [
    "Attr", "Attrs", "ConfigError", "Edits", "Error", "LogBatch", "LogEdits", "LogView",
    "Match", "PatternSet", "Plugin", "RangeMatch", "Selector", "SpanBatch", "SpanEdits",
    "SpanView", "count", "keyed_hash", "log", "parse_config", "register",
]

HOOKS = ("request", "dispatch", "child", "export-spans", "export-logs", "error")


class Selector:
    """What the plugin wants to see: hooks (names in `HOOKS`), keys (exact or `prefix.*`),
    and keys a record must carry for the call to happen. Empty = everything."""

    def __init__(self, hooks=(), keys=(), require_any=()):
        for h in hooks:
            if h not in HOOKS:
                raise ValueError(f"unknown hook {h!r} (one of {', '.join(HOOKS)})")
        self.hooks = list(hooks)
        self.keys = list(keys)
        self.require_any = list(require_any)

    @staticmethod
    def none():
        """No call at any hook, for a plugin with nothing to do under its config (an empty
        list of selectors means every hook): `require_any` holding only the empty key, which
        never matches."""
        return Selector(require_any=[""])


class Plugin:
    """Base class. Set `NAME` and `VERSION`; implement `init(config)` and the hooks of the
    roles the plugin plays:

    - `on_request / on_dispatch / on_child(attrs, out: Edits)` (world `observer`)
    - `on_spans(batch: SpanBatch, out: SpanEdits)` (world `span-processor` or `redactor`)
    - `on_logs(batch: LogBatch, out: LogEdits)` (world `log-processor` or `redactor`)
    - `translate(err: dict) -> dict | None` (world `error-translator`)

    One instance lives as long as its component instance: build rules in `init`, never per
    call."""

    NAME = "plugin"
    VERSION = "0.0.0"

    def __init__(self, config: dict):
        self.config = config

    def selectors(self):
        return []


def parse_config(text: str) -> dict:
    """The operator's `[plugins.config]` as a dict (empty text = `{}`)."""
    if not text.strip():
        return {}
    try:
        v = json.loads(text)
    except ValueError as e:
        raise ConfigError(f"config is not JSON: {e}") from None
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise ConfigError("config is not a table")
    return v


_registered = None


def register(cls):
    """Registers the plugin class the component's exports call (`from acpd_plugin.exports
    import *` in the app module does the exporting)."""
    global _registered
    _registered = cls
    return cls
