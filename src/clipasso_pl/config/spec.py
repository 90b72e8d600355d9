"""The small type system of the config schema: a ``Spec`` says what one value may be (kind, bounds,
choices, null), checks a value against it and says in words what it allows. Torch-free and
Hydra-free: the CLI checks a config with it before any model loads."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from omegaconf import ListConfig

_KINDS = ("int", "float", "bool", "str", "int_list", "float_list", "str_list", "any")


@dataclass(frozen=True)
class Spec:
    """What one config value may be. Numbers: ``ge``/``gt``/``le``/``lt`` bounds and (floats)
    ``finite``; strings: ``choices``; lists: ``min_len``, ``distinct`` and the bounds or
    choices of their items; ``null``: None allowed; ``num``: a string key that also takes a
    number (Hydra parses ``logger.version=3`` as an int); ``options`` (kind ``any``): the
    alternatives, the first that fits wins. ``doc``: where the key is documented, when not in
    the command's YAML or its group folder."""

    kind: str
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    finite: bool = True
    choices: tuple | None = None
    null: bool = False
    num: bool = False
    min_len: int = 0
    distinct: bool = False
    options: tuple = ()
    doc: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ValueError(f"Spec kind {self.kind!r} is not one of {_KINDS}")

    # -- what it allows, in words
    def bounds(self) -> str:
        parts = [f"{op} {v:g}" for op, v in ((">=", self.ge), (">", self.gt), ("<=", self.le), ("<", self.lt))
                 if v is not None]
        return " and ".join(parts)

    def allowed(self) -> str:
        item = {"int": "an integer", "float": "a finite number" if self.finite else "a number", "bool": "true or false",
                "str": "a string", "int_list": "a list of integers", "float_list": "a list of numbers",
                "str_list": "a list of strings"}.get(self.kind)
        if self.kind == "any":
            text = " or ".join(o.allowed() for o in self.options)
        else:
            text = item
            if self.choices:
                text = ("one of " if self.kind == "str" else "a list of ") + ", ".join(map(str, self.choices))
            if self.bounds():
                text += (" " if self.kind in ("int", "float") else ", each ") + self.bounds()
            if self.min_len:
                text += f", at least {self.min_len} long"
            if self.distinct:
                text += ", no repeats"
        return text + (" or null" if self.null else "")

    # -- the check: None when ``value`` fits, else what is wrong with it
    def problem(self, value: Any) -> str | None:
        if value is None:
            return None if self.null else "is null"
        if self.kind == "any":
            return None if any(o.problem(value) is None for o in self.options) else "does not fit"
        if self.kind in ("int", "float", "bool", "str"):
            return self._scalar(value)
        if not isinstance(value, (list, tuple, ListConfig)):
            return "is not a list"
        items = list(value)
        item = Spec(self.kind[: -len("_list")], ge=self.ge, gt=self.gt, le=self.le, lt=self.lt, finite=self.finite,
                    choices=self.choices)
        for v in items:
            if v is None or item._scalar(v):
                return f"has the entry {v!r}, which {item._scalar(v) if v is not None else 'is null'}"
        if len(items) < self.min_len:
            return "is empty" if not items else f"has {len(items)} entries"
        if self.distinct and len(set(items)) != len(items):
            return "repeats an entry"
        return None

    def _scalar(self, value: Any) -> str | None:
        if self.kind == "bool":
            return None if isinstance(value, bool) else "is not true/false"
        if self.kind == "str":
            if isinstance(value, bool) or not isinstance(value, (str, int, float) if self.num else str):
                return "is not a string"
            if self.choices and value not in self.choices:
                return "is not one of the choices"
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float) if self.kind == "float" else int):
            return "is not an integer" if self.kind == "int" else "is not a number"
        if self.kind == "float" and self.finite and not math.isfinite(value):
            return "is not finite"
        # Written as violations, so that NaN (finite=False) passes the bounds.
        if ((self.ge is not None and value < self.ge) or (self.gt is not None and value <= self.gt)
                or (self.le is not None and value > self.le) or (self.lt is not None and value >= self.lt)):
            return "is out of range"
        return None

    # -- values a test can try: one of the wrong type, one out of range (None when there is none)
    def wrong_type(self) -> str:
        if self.kind in ("int", "float", "bool") or self.kind.endswith("_list"):
            return "abc"
        if self.kind == "str" and self.choices:
            return "[1,2]"
        return "{a:1}" if self.kind == "any" or self.num else "[1,2]"

    def out_of_range(self) -> str | None:
        if self.kind == "any":
            return next((o.out_of_range() for o in self.options if o.out_of_range() is not None), None)
        if self.choices:
            bad = "no_such_choice"
            return bad if self.kind == "str" else f"[{bad}]"
        bound = next(((v - 1 if op == "ge" else v) for op, v in (("ge", self.ge), ("gt", self.gt)) if v is not None), None)
        if bound is None:
            bound = next(((v + 1 if op == "le" else v) for op, v in (("le", self.le), ("lt", self.lt)) if v is not None),
                         None)
        if bound is None:
            return None
        text = repr(int(bound)) if self.kind.startswith("int") else repr(float(bound))
        return f"[{text}]" if self.kind.endswith("_list") else text


def Int(ge=None, gt=None, le=None, lt=None, **kw) -> Spec:
    return Spec("int", ge=ge, gt=gt, le=le, lt=lt, **kw)


def Float(ge=None, gt=None, le=None, lt=None, **kw) -> Spec:
    return Spec("float", ge=ge, gt=gt, le=le, lt=lt, **kw)


def Bool(**kw) -> Spec:
    return Spec("bool", **kw)


def Str(choices=None, **kw) -> Spec:
    return Spec("str", choices=tuple(choices) if choices else None, **kw)


def IntList(ge=None, gt=None, le=None, lt=None, **kw) -> Spec:
    return Spec("int_list", ge=ge, gt=gt, le=le, lt=lt, **kw)


def FloatList(ge=None, gt=None, le=None, lt=None, **kw) -> Spec:
    return Spec("float_list", ge=ge, gt=gt, le=le, lt=lt, **kw)


def StrList(choices=None, **kw) -> Spec:
    return Spec("str_list", choices=tuple(choices) if choices else None, **kw)


def AnyOf(*options: Spec, **kw) -> Spec:
    return Spec("any", options=options, **kw)


PATH = Str(null=True, num=True)  # a file or folder path; null: the documented default
TARGET = Str()  # a ``_target_``: the class or function Hydra instantiates
