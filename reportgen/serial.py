"""Frozen dataclasses to JSON and back, and their JSON Schema, all read from the type hints.

One description of a result type serves three jobs, so they cannot drift apart: writing
report.json, reading it back for `reportgen diff`, and the schema shipped with the package.
Supported annotations: dataclasses, `int`, `float`, `str`, `bool`, `Any`, `X | None`,
`Literal[...]`, `tuple[X, ...]`, fixed tuples `tuple[X, Y]` and `dict[str, X]`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from collections.abc import Mapping
from typing import Any

import numpy as np

SIGNIFICANT_DIGITS = 6


class SchemaError(ValueError):
    """JSON that does not have the shape a result type describes; the message names where."""


def to_json(value: Any) -> Any:
    """JSON-ready values: dataclasses as objects, floats to 6 significant digits, NaN/inf as null."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return to_json(value.tolist())
    if isinstance(value, list | tuple):
        return [to_json(v) for v in value]
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        number = float(value)
        return float(f"{number:.{SIGNIFICANT_DIGITS}g}") if math.isfinite(number) else None
    return value


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_optional(annotation: Any) -> tuple[bool, Any]:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(members) == 1 and len(typing.get_args(annotation)) == 2:
            return True, members[0]
    return False, annotation


def from_json(annotation: Any, data: Any, where: str = "$") -> Any:
    """Rebuild a value of type `annotation` from JSON data; SchemaError names the first mismatch."""
    optional, inner = _is_optional(annotation)
    if data is None:
        if optional or inner is Any:
            return None
        raise SchemaError(f"{where}: missing value")
    annotation = inner
    if annotation is Any:
        return data
    if isinstance(annotation, type) and dataclasses.is_dataclass(annotation):
        if not isinstance(data, dict):
            raise SchemaError(f"{where}: expected an object")
        names = {f.name for f in dataclasses.fields(annotation)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise SchemaError(f"{where}: unexpected field {unknown[0]!r}")
        hints = _hints(annotation)
        values = {}
        for field in sorted(dataclasses.fields(annotation), key=lambda f: f.name):
            if field.name in data:
                values[field.name] = from_json(hints[field.name], data[field.name], f"{where}.{field.name}")
            elif field.default is dataclasses.MISSING:
                raise SchemaError(f"{where}: missing field {field.name!r}")
        return annotation(**values)
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        if data not in args:
            raise SchemaError(f"{where}: {data!r} is not one of {', '.join(map(repr, args))}")
        return data
    if origin is tuple:
        if not isinstance(data, list):
            raise SchemaError(f"{where}: expected a list")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(from_json(args[0], v, f"{where}[{i}]") for i, v in enumerate(data))
        if len(data) != len(args):
            raise SchemaError(f"{where}: expected {len(args)} items")
        return tuple(from_json(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, data, strict=True)))
    if origin is dict:
        if not isinstance(data, dict):
            raise SchemaError(f"{where}: expected an object")
        return {k: from_json(args[1], v, f"{where}.{k}") for k, v in data.items()}
    return _scalar(annotation, data, where)


def _scalar(annotation: Any, data: Any, where: str) -> Any:
    if annotation is bool:
        ok = isinstance(data, bool)
    elif annotation is int:
        ok = isinstance(data, int) and not isinstance(data, bool)
    elif annotation is float:
        ok = isinstance(data, int | float) and not isinstance(data, bool)
        data = float(data) if ok else data
    elif annotation is str:
        ok = isinstance(data, str)
    else:
        raise TypeError(f"unsupported annotation {annotation!r}")
    if not ok:
        raise SchemaError(f"{where}: expected {annotation.__name__}, got {type(data).__name__}")
    return data


_SCALARS: Mapping[Any, str] = {bool: "boolean", int: "integer", float: "number", str: "string"}


def json_schema(root: type, schema_id: str, title: str) -> dict[str, Any]:
    """A JSON Schema (draft 2020-12) for `root`, with one definition per dataclass."""
    definitions: dict[str, Any] = {}

    def describe(annotation: Any) -> dict[str, Any]:
        optional, annotation = _is_optional(annotation)
        if optional:
            return {"anyOf": [describe(annotation), {"type": "null"}]}
        if annotation is Any:
            return {}
        if isinstance(annotation, type) and dataclasses.is_dataclass(annotation):
            name = annotation.__name__
            if name not in definitions:
                definitions[name] = {}  # placeholder against recursion
                hints = _hints(annotation)
                fields = dataclasses.fields(annotation)
                definitions[name] = {
                    "type": "object",
                    "description": (annotation.__doc__ or "").strip().splitlines()[0],
                    "properties": {f.name: describe(hints[f.name]) for f in fields},
                    "required": [f.name for f in fields if f.default is dataclasses.MISSING],
                    "additionalProperties": False,
                }
            return {"$ref": f"#/$defs/{name}"}
        origin, args = typing.get_origin(annotation), typing.get_args(annotation)
        if origin is typing.Literal:
            return {"enum": list(args)}
        if origin is tuple:
            if len(args) == 2 and args[1] is Ellipsis:
                return {"type": "array", "items": describe(args[0])}
            return {
                "type": "array",
                "prefixItems": [describe(a) for a in args],
                "minItems": len(args),
                "maxItems": len(args),
            }
        if origin is dict:
            return {"type": "object", "additionalProperties": describe(args[1])}
        if annotation is float:
            return {"type": "number"}
        return {"type": _SCALARS[annotation]}

    top = describe(root)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": schema_id,
        "title": title,
        **top,
        "$defs": dict(sorted(definitions.items())),
    }
