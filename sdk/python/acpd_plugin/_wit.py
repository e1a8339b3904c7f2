"""The WIT types of `acpd:plugin`: the generated bindings inside a component (componentize-py
builds them), look-alikes with the same names and fields outside one, so plugin code and its
native tests (`python -m unittest`) run the same views and edit builder."""

import sys
from dataclasses import dataclass
from enum import Enum
from typing import List, Tuple, Union

IN_COMPONENT = sys.platform == "wasi"

if IN_COMPONENT:
    from wit_world.imports.types import (  # noqa: F401
        AttrEdit_Remove,
        AttrEdit_Replace,
        AttrEdit_Upsert,
        AttrRef,
        AttrValue_Boolean,
        AttrValue_Double,
        AttrValue_Int,
        AttrValue_Str,
        Hook,
        PluginError_Failed,
        PluginError_InvalidConfig,
        PluginInfo,
        Selector,
        StrRef,
        ValueRef_Array,
        ValueRef_Boolean,
        ValueRef_Double,
        ValueRef_Int,
        ValueRef_Str,
    )
else:

    @dataclass
    class StrRef:
        offset: int
        len: int

    @dataclass
    class ValueRef_Str:
        value: StrRef

    @dataclass
    class ValueRef_Boolean:
        value: bool

    @dataclass
    class ValueRef_Int:
        value: int

    @dataclass
    class ValueRef_Double:
        value: float

    @dataclass
    class ValueRef_Array:
        value: StrRef

    @dataclass
    class AttrRef:
        record: int
        key: StrRef
        value: Union[ValueRef_Str, ValueRef_Boolean, ValueRef_Int, ValueRef_Double, ValueRef_Array]

    @dataclass
    class AttrValue_Str:
        value: str

    @dataclass
    class AttrValue_Boolean:
        value: bool

    @dataclass
    class AttrValue_Int:
        value: int

    @dataclass
    class AttrValue_Double:
        value: float

    @dataclass
    class AttrEdit_Replace:
        value: Tuple[int, object]

    @dataclass
    class AttrEdit_Remove:
        value: int

    @dataclass
    class AttrEdit_Upsert:
        value: Tuple[int, str, object]

    class Hook(Enum):
        REQUEST = 0
        DISPATCH = 1
        CHILD = 2
        EXPORT_SPANS = 3
        EXPORT_LOGS = 4
        ERROR = 5

    @dataclass
    class Selector:
        hooks: List[Hook]
        keys: List[str]
        require_any: List[str]

    @dataclass
    class PluginInfo:
        name: str
        version: str
        selectors: List[Selector]

    @dataclass
    class PluginError_InvalidConfig:
        value: str

    @dataclass
    class PluginError_Failed:
        value: str
