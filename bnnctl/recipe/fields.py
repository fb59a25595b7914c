"""One recipe value's description (``Field``) and the checks of a value against it.

The bounds apply to a number, or to each number in a list (its ``items``): ``low`` and ``high``
with ``low_open`` / ``high_open`` for a strict bound; numbers must be finite. ``length`` is a
list's exact length; ``rule(value)`` returns None, or what is allowed when ``value`` is not.
A section of the recipe declares its values with ``option``: a dataclass field whose metadata
holds the ``Field``.
"""
from __future__ import annotations

import dataclasses
import json
import math
import reprlib
from dataclasses import dataclass
from typing import Any, Callable

from ..errors import UserError, did_you_mean

REQUIRED = object()
NUM = (int, float)
POSITIVE = {"gt": 0}
FRACTION = {"ge": 0, "lt": 1}  # a dropout probability or an Adam beta


class RecipeError(UserError):
    """A recipe the user must fix; the message is one sentence naming the file and key."""


@dataclass
class Field:
    """One recipe value: its types, default, and the values it may take."""

    types: tuple[type, ...]
    default: Any = REQUIRED
    choices: tuple[Any, ...] | None = None
    help: str = ""
    nullable: bool = False
    items: tuple[type, ...] | None = None  # element types when the field is a list
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    length: int | None = None
    rule: Callable[[Any], str | None] | None = None

    def range_text(self) -> str:
        """'at least 1', 'greater than 0', 'at least 0 and less than 1', ... ('' when unbounded)."""
        def bound(value: float, open_: bool, word_open: str, word_closed: str) -> str:
            return f"{word_open if open_ else word_closed} {value if isinstance(value, int) else f'{value:g}'}"
        parts = []
        if self.low is not None:
            parts.append(bound(self.low, self.low_open, "greater than", "at least"))
        if self.high is not None:
            parts.append(bound(self.high, self.high_open, "less than", "at most"))
        return " and ".join(parts)

    def type_text(self) -> str:
        """What the value may be, briefly: 'int, at least 1', 'mnist | cifar10 | svhn', '[number, number], each ...'."""
        if self.choices is not None:
            text = " | ".join(map(str, self.choices))
        elif self.items is not None:
            item = _short_type(self.items)
            text = f"[{', '.join([item] * self.length)}]" if self.length is not None else f"[{item}, ...]"
        else:
            text = _short_type(self.types)
        bounds = self.range_text()
        text += f", {'each ' if self.items is not None else ''}{bounds}" if bounds else ""
        return text + (", or null" if self.nullable else "")

    def default_text(self) -> str:
        """The default as YAML writes it ('null', 'true', '[0.9, 0.999]'), or 'required'."""
        if self.default is REQUIRED:
            return "required"
        if isinstance(self.default, str):
            return self.default or '""'
        return json.dumps(list(self.default) if isinstance(self.default, tuple) else self.default)

    def in_range(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return True  # strings of a mixed list (model.conv's 'M') have rules of their own
        if not _finite(value):
            return False
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False
        if self.high is not None and (value > self.high or (self.high_open and value == self.high)):
            return False
        return True


def f(types, default=REQUIRED, choices=None, help="", nullable=False, items=None, *, ge=None, gt=None, le=None,
      lt=None, length=None, rule=None) -> Field:
    """A Field; ``ge``/``gt`` (at least / greater than) and ``le``/``lt`` (at most / less than) bound numbers."""
    types = types if isinstance(types, tuple) else (types,)
    return Field(types, default, choices, help, nullable, items,
                 low=gt if gt is not None else ge, high=lt if lt is not None else le,
                 low_open=gt is not None, high_open=lt is not None, length=length, rule=rule)


def option(types, default=REQUIRED, **spec) -> Any:
    """A section's dataclass field described by ``f(types, default, **spec)``; no default when REQUIRED.

    A list's default is stored as a tuple, as every list of a resolved recipe is.
    """
    described = f(types, default, **spec)
    metadata = {"field": described}
    if default is REQUIRED:
        return dataclasses.field(metadata=metadata)
    return dataclasses.field(default=tuple(default) if isinstance(default, list) else default, metadata=metadata)


EXCERPT_CHARS = 60  # what a message quotes of a value at most

_EXCERPT = reprlib.Repr()
_EXCERPT.maxlevel, _EXCERPT.maxlist, _EXCERPT.maxtuple, _EXCERPT.maxdict = 3, 8, 8, 6
_EXCERPT.maxstring, _EXCERPT.maxother, _EXCERPT.maxlong = EXCERPT_CHARS, EXCERPT_CHARS, 40


def excerpt(value: Any) -> str:
    """``repr(value)`` cut to about ``EXCERPT_CHARS`` characters (a long list shows its first items and '...').

    Values come from files and the command line: a message quotes a bounded part of one, so that
    a huge or deeply shared value (a YAML alias chain) costs no time and no screen to report.
    """
    return clipped(_EXCERPT.repr(value))


def clipped(text: str) -> str:
    """``text`` as it is, or its first ``EXCERPT_CHARS`` characters ending in '...'."""
    return text if len(text) <= EXCERPT_CHARS else text[:EXCERPT_CHARS - 3] + "..."


def _finite(value: Any) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer too large for a float
        return False


def _short_type(types: tuple[type, ...]) -> str:
    """'int', 'number' (an int or a float), 'str', 'bool', 'list', 'int or str'."""
    names = {int: "int", float: "number", str: "str", bool: "bool", list: "list"}
    shown = [t for t in types if not (t is int and float in types)]
    return " or ".join(names.get(t, t.__name__) for t in shown)


def type_name(types: tuple[type, ...]) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false", list: "a list"}
    return " or ".join(dict.fromkeys(names.get(t, t.__name__) for t in types))


def _described(spec: Field, types: tuple[type, ...]) -> str:
    """'at least 1' (an integer), 'a finite number greater than 0', ...: what a value of the right type may be."""
    allowed = spec.range_text()
    if float in types:
        return f"a finite number {allowed}".rstrip()
    return allowed or type_name(types)


def _is_instance(value: Any, types: tuple[type, ...]) -> bool:
    if isinstance(value, bool) and bool not in types:
        return False  # YAML's true is not a number here
    return isinstance(value, types)


def checked_value(spec: Field, key: str, value: Any, source: str) -> Any:
    """``value`` (given in the recipe) checked against ``spec``; a number field's numbers as floats, lists as tuples."""
    if value is None and (spec.nullable or spec.default is None):
        return None
    if not _is_instance(value, spec.types):
        raise RecipeError(f"{source}: '{key}' must be {type_name(spec.types)}, got {excerpt(value)}.")
    if spec.items is not None and any(not _is_instance(v, spec.items) for v in value):
        raise RecipeError(f"{source}: every item of '{key}' must be {type_name(spec.items)}, got {excerpt(value)}.")
    if spec.choices is not None and value not in spec.choices:
        raise RecipeError(f"{source}: '{key}' must be one of {', '.join(map(str, spec.choices))}, "
                          f"got {excerpt(value)}{did_you_mean(value, spec.choices) if isinstance(value, str) else '.'}")
    if isinstance(value, list):
        if spec.length is not None and len(value) != spec.length:
            raise RecipeError(f"{source}: '{key}' must list exactly {spec.length} values "
                              f"({_described(spec, spec.items or NUM)} each), got {excerpt(value)}.")
        bad = [v for v in value if not spec.in_range(v)]
        if bad:
            raise RecipeError(f"{source}: every number in '{key}' must be {_described(spec, spec.items or NUM)}, "
                              f"got {excerpt(bad[0])} in {excerpt(value)}.")
    elif not spec.in_range(value):
        raise RecipeError(f"{source}: '{key}' must be {_described(spec, spec.types)}, got {excerpt(value)}.")
    if spec.rule is not None:
        allowed = spec.rule(value)
        if allowed:
            raise RecipeError(f"{source}: '{key}' must be {allowed}, got {excerpt(value)}.")
    if isinstance(value, list):
        return tuple(value)
    return float(value) if float in spec.types and int in spec.types else value
