"""Declared options: what a source, kind or method accepts, checked by one checker.

Each component declares its options next to its code as `{name: Option(...)}`. The same
declarations give the defaults, the one-line error messages ("params key
'methods.maml.inner_steps' must be an integer >= 0; got -1") and the JSON Schema fragments
merged into the params schema (`mtml.params.params_schema`). Torch-free on purpose: params
validation imports this module.
"""

from __future__ import annotations

import copy
import math
import numbers
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mtml.errors import UserError

_NAMES = {int: "integer", float: "number", bool: "true or false", str: "string", list: "list",
          dict: "mapping"}


@dataclass(frozen=True)
class Option:
    """One option: its type, bounds or allowed values, default and a one-line description.

    - `type`: int, float (an int is accepted), bool (strictly true/false), str, list or dict;
      a tuple of them accepts any one (e.g. `(str, dict)`: a path or a mapping of paths);
      object: anything (only for undeclared legacy `defaults`).
    - `min`/`max` bound numbers, and the elements of a list or values of a dict;
      `above=True` / `below=True` make `min` / `max` exclusive (> min, < max).
    - `choices`: allowed values (of the value, or of each element of a list).
    - `items`: element type of a list / value type of a dict; `length`: exact list length.
    - `per_key`: a number, or a mapping name -> number (e.g. an inner learning rate per task).
    - `nullable`: null is allowed (default: when the default is None).
    - `pattern` + `what`: a regular expression a string must match, and how to say so.
    - `recorded=False`: the default is not filled in (an option added after results were
      recorded: their resolved blocks, so checkpoint fingerprints and Snakemake's params, stay
      as they were); code reads it as `hp.get(name, option.default)`.
    """

    type: type | tuple[type, ...]
    default: Any
    help: str
    min: float | None = None
    max: float | None = None
    above: bool = False
    below: bool = False
    choices: tuple | None = None
    items: type | None = None
    length: int | None = None
    per_key: bool = False
    nullable: bool | None = None
    pattern: str | None = None
    what: str | None = None
    extra: dict = field(default_factory=dict)  # further JSON Schema keywords (documentation)
    recorded: bool = True

    def __post_init__(self):
        if self.nullable is None:
            object.__setattr__(self, "nullable", self.default is None)


def defaults(options: Mapping[str, Option]) -> dict:
    """{name: default} of declared options (fresh copies of mutable defaults), those with
    `recorded=False` left out."""
    return {k: copy.deepcopy(o.default) for k, o in options.items() if o.recorded}


# --------------------------------------------------------------------------- checking


def _is(value, typ) -> bool:
    if typ is object:
        return True
    if typ is bool:
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    if typ is int:
        return isinstance(value, numbers.Integral)
    if typ is float:
        return isinstance(value, numbers.Real) and math.isfinite(value)
    if typ is list:
        return isinstance(value, list | tuple)
    return isinstance(value, typ)


def _bounds(opt: Option) -> str:
    if opt.min is not None and opt.max is not None and not (opt.above or opt.below):
        return f" in {opt.min}..{opt.max}"
    parts = []
    if opt.min is not None:
        parts.append(f"{'>' if opt.above else '>='} {opt.min}")
    if opt.max is not None:
        parts.append(f"{'<' if opt.below else '<='} {opt.max}")
    return (" " + " and ".join(parts)) if parts else ""


def _scalar(typ, opt: Option, plural: bool = False) -> str:
    if opt.choices is not None:
        return f"{'values from' if plural else 'one of'} {', '.join(map(str, opt.choices))}"
    if opt.what and typ is str:
        return opt.what
    name = _NAMES.get(typ, "value")
    if typ is bool:
        return name
    if plural:
        name += "s"
    return name + (_bounds(opt) if typ in (int, float) else "")


def describe(opt: Option) -> str:
    """What a value must be, as the message says it: 'an integer >= 0', 'true or false', ..."""
    types = opt.type if isinstance(opt.type, tuple) else (opt.type,)
    parts = []
    for typ in types:
        if typ is list:
            n = f"{opt.length} " if opt.length is not None else ""
            parts.append(f"a list of {n}{_scalar(opt.items, opt, plural=True)}" if opt.items else "a list")
        elif typ is dict:
            parts.append(f"a mapping name -> {_scalar(opt.items, opt)}" if opt.items else "a mapping")
        else:
            s = _scalar(typ, opt)
            parts.append(s if s.startswith(("one of", "true")) or opt.what and typ is str
                         else ("an " if s[0] in "aeiou" else "a ") + s)
    if opt.per_key:
        parts.append(f"a mapping name -> {_scalar(opt.type, opt)}")
    if opt.nullable:
        parts.append("null")
    return " or ".join(parts)


def _element_ok(value, typ, opt: Option) -> bool:
    if not _is(value, typ):
        return False
    if opt.choices is not None and value not in opt.choices:
        return False
    if typ in (int, float):
        if opt.min is not None and (value <= opt.min if opt.above else value < opt.min):
            return False
        if opt.max is not None and (value >= opt.max if opt.below else value > opt.max):
            return False
    if typ is str and opt.pattern is not None and not re.fullmatch(opt.pattern, value):
        return False
    return True


def _ok(value, opt: Option) -> bool:
    if value is None:
        return bool(opt.nullable)
    types = opt.type if isinstance(opt.type, tuple) else (opt.type,)
    for typ in types:
        if typ is list and _is(value, list):
            if opt.length is not None and len(value) != opt.length:
                continue
            if opt.items is None or all(_element_ok(v, opt.items, opt) for v in value):
                return True
        elif typ is dict and isinstance(value, dict):
            if all(isinstance(k, str) for k in value) and (
                    opt.items is None or all(_element_ok(v, opt.items, opt) for v in value.values())):
                return True
        elif typ not in (list, dict) and _element_ok(value, typ, opt):
            return True
    if opt.per_key and isinstance(value, dict):
        return all(isinstance(k, str) and _element_ok(v, opt.type, opt) for k, v in value.items())
    return False


def check_value(opt: Option, value, key: str):
    """`value` if it fits `opt`, else a UserError naming params key `key`."""
    if _ok(value, opt):
        return value
    if opt.choices is not None and opt.type in (str, int) and not isinstance(value, list | dict):
        allowed = ", ".join(map(str, opt.choices))
        raise UserError(f"params key '{key}' is {value!r}; allowed: {allowed}"
                        + (" or null" if opt.nullable else ""))
    raise UserError(f"params key '{key}' must be {describe(opt)}; got {value!r}")


def check_options(values: Mapping | None, options: Mapping[str, Option], where: str,
                  unknown: str = "is unknown") -> dict:
    """Check `values` (a params block at key `where`) against declared `options`; return them
    with defaults filled. An undeclared key is a UserError listing the declared ones."""
    if values is None:
        values = {}
    if not isinstance(values, Mapping):
        raise UserError(f"params key '{where}' must be a mapping of options; got {values!r}")
    extra = sorted(set(values) - set(options), key=str)
    if extra:
        raise UserError(f"params key '{where}.{extra[0]}' {unknown}; "
                        f"allowed: {', '.join(sorted(options)) or '(none)'}")
    out = defaults(options)
    for k, v in values.items():
        out[k] = check_value(options[k], v, f"{where}.{k}")
    return out


# --------------------------------------------------------------------------- JSON Schema

_JSON = {int: "integer", float: "number", bool: "boolean", str: "string", list: "array", dict: "object"}


def _element_schema(typ, opt: Option) -> dict:
    if typ is object:
        return {}
    s: dict = {"type": _JSON[typ]}
    if opt.choices is not None:
        s["enum"] = list(opt.choices)
    if typ in (int, float):
        if opt.min is not None:
            s["exclusiveMinimum" if opt.above else "minimum"] = opt.min
        if opt.max is not None:
            s["exclusiveMaximum" if opt.below else "maximum"] = opt.max
    if typ is str and opt.pattern is not None:
        s["pattern"] = f"^(?:{opt.pattern})$"
    return s


def option_schema(opt: Option) -> dict:
    """The JSON Schema of one option (documentation plus the checks JSON Schema can state)."""
    alts = []
    for typ in opt.type if isinstance(opt.type, tuple) else (opt.type,):
        if typ is list:
            s = {"type": "array"}
            if opt.items is not None:
                s["items"] = _element_schema(opt.items, opt)
            if opt.length is not None:
                s["minItems"] = s["maxItems"] = opt.length
        elif typ is dict:
            s = {"type": "object"}
            if opt.items is not None:
                s["additionalProperties"] = _element_schema(opt.items, opt)
        else:
            s = _element_schema(typ, opt)
        alts.append(s)
    if opt.per_key:
        alts.append({"type": "object", "additionalProperties": _element_schema(opt.type, opt)})
    if opt.nullable:
        alts.append({"type": "null"})
    out = alts[0] if len(alts) == 1 else {"anyOf": alts}
    return {**out, **opt.extra, "default": copy.deepcopy(opt.default), "description": opt.help}


def options_schema(options: Mapping[str, Option]) -> dict:
    return {k: option_schema(o) for k, o in options.items()}
