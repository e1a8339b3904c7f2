"""What a plugin answers: sparse edits by index, checked by the daemon before it applies them."""

from . import _wit


def attr_value(v):
    """A Python value as a WIT attribute value (bool before int: bool is an int in Python)."""
    if isinstance(v, str):
        return _wit.AttrValue_Str(v)
    if isinstance(v, bool):
        return _wit.AttrValue_Boolean(v)
    if isinstance(v, int):
        return _wit.AttrValue_Int(v)
    if isinstance(v, float):
        return _wit.AttrValue_Double(v)
    raise TypeError(f"an attribute value is str, bool, int or float, not {type(v).__name__}")


class Edits:
    """Edits to the attributes a hook was given."""

    def __init__(self):
        self.list = []

    def replace(self, index: int, value):
        self.list.append(_wit.AttrEdit_Replace((index, attr_value(value))))

    def remove(self, index: int):
        self.list.append(_wit.AttrEdit_Remove(index))

    def upsert(self, record: int, key: str, value):
        self.list.append(_wit.AttrEdit_Upsert((record, key, attr_value(value))))

    def mask(self, index: int, text: str, keep_last: int):
        """Replaces attribute `index` (whose text is `text`) with `****` and its last
        `keep_last` characters."""
        self.replace(index, "****" + (text[-keep_last:] if keep_last > 0 else ""))

    def __len__(self):
        return len(self.list)


class SpanEdits:
    def __init__(self):
        self.attrs = Edits()
        self.renames = []

    def rename(self, span: int, name: str):
        self.renames.append((span, name))


class LogEdits:
    def __init__(self):
        self.attrs = Edits()
        self.bodies = []
        self.drops = []

    def set_body(self, log: int, body: str):
        self.bodies.append((log, body))

    def drop(self, log: int):
        self.drops.append(log)
