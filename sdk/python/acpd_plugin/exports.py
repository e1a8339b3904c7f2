"""The component's exports: componentize-py looks for a class per exported interface in the
app module, which gets them with `from acpd_plugin.exports import *`. Each forwards to the
registered plugin; an `acpd_plugin.Error` becomes the hook's `plugin-error`, anything else
is logged to the daemon with its traceback and traps the instance (as a Rust panic does)."""

import traceback

import acpd_plugin as _sdk

from . import _wit
from .edits import Edits, LogEdits, SpanEdits
from .errors import ConfigError, Error
from .views import Arena, Attrs, LogBatch, SpanBatch

__all__ = ["Lifecycle", "ObserveHooks", "SpanHooks", "LogHooks", "ErrorHooks"]

_plugin = None


def _err(e: Error):
    from componentize_py_types import Err

    if isinstance(e, ConfigError):
        return Err(_wit.PluginError_InvalidConfig(e.message))
    return Err(_wit.PluginError_Failed(e.message))


def _call(f, *args):
    try:
        return f(*args)
    except Error as e:
        raise _err(e) from None
    except BaseException:
        _sdk.log("error", "exception: " + traceback.format_exc()[-2000:])
        raise


def _get():
    if _plugin is None:
        raise Error("hook called before init")
    return _plugin


_HOOK_ENUM = {
    "request": "REQUEST",
    "dispatch": "DISPATCH",
    "child": "CHILD",
    "export-spans": "EXPORT_SPANS",
    "export-logs": "EXPORT_LOGS",
    "error": "ERROR",
}


class Lifecycle:
    def init(self, config_json: str):
        def run():
            global _plugin
            cls = _sdk._registered
            if cls is None:
                raise ConfigError("no plugin registered (acpd_plugin.register(MyPlugin))")
            _plugin = cls(_sdk.parse_config(config_json))
            sels = [
                _wit.Selector(
                    [getattr(_wit.Hook, _HOOK_ENUM[h]) for h in s.hooks], s.keys, s.require_any
                )
                for s in _plugin.selectors()
            ]
            return _wit.PluginInfo(cls.NAME, cls.VERSION, sels)

        return _call(run)


class ObserveHooks:
    def _observe(self, name, arena, attrs):
        def run():
            out = Edits()
            f = getattr(_get(), name, None)
            if f is not None:
                f(Attrs(Arena(arena), attrs), out)
            return out.list

        return _call(run)

    def on_request(self, arena, attrs):
        return self._observe("on_request", arena, attrs)

    def on_dispatch(self, arena, attrs):
        return self._observe("on_dispatch", arena, attrs)

    def on_child(self, arena, attrs):
        return self._observe("on_child", arena, attrs)


class SpanHooks:
    def on_spans(self, batch):
        def run():
            from wit_world.exports.span_hooks import SpanEdits as WitSpanEdits

            out = SpanEdits()
            f = getattr(_get(), "on_spans", None)
            if f is not None:
                f(SpanBatch(batch), out)
            return WitSpanEdits(out.attrs.list, out.renames)

        return _call(run)


class LogHooks:
    def on_logs(self, batch):
        def run():
            from wit_world.exports.log_hooks import LogEdits as WitLogEdits

            out = LogEdits()
            f = getattr(_get(), "on_logs", None)
            if f is not None:
                f(LogBatch(batch), out)
            return WitLogEdits(out.attrs.list, out.bodies, out.drops)

        return _call(run)


class ErrorHooks:
    def translate(self, err):
        def run():
            import json

            from wit_world.exports.error_hooks import ClientError

            f = getattr(_get(), "translate", None)
            if f is None:
                return None
            info = {
                "surface": "http" if err.surface.value == 0 else "sse",
                "code": err.code,
                "status": err.status,
                "message": err.message,
                "retry_after": err.retry_after,
                "context": json.loads(err.context_json or "{}"),
                "rpc_code": err.rpc_code,
            }
            r = f(info)
            if r is None:
                return None
            return ClientError(
                r["status"], r["code"], r["message"], bool(r.get("retryable", False)),
                r.get("retry_after"),
            )

        return _call(run)
