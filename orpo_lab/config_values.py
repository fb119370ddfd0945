"""Plain values (YAML, a form, JSON, the command line) as TrainConfig's field types, the words
and the old sentinels of its optional fields, and config files read with a clear message when
they are missing or malformed."""

from __future__ import annotations

import argparse
import math
import warnings
from pathlib import Path
from typing import Any

import yaml

_EXPECTED = {"int": "a whole number", "float": "a number", "str": "text", "bool": "true or false"}


def coerce(kind: str, value: Any, word: str = "") -> Any:
    """`value` as the field type `kind` ("int", "float", "str", "bool", or "int | None" ...);
    ValueError if it is not one. An optional field takes None, "none" or its `word` (e.g. "end")
    as None; YAML reads a bare `off` as false, so false is None where the word is "off"."""
    if not kind.endswith(" | None"):
        return _coerce(kind, value)
    words = ("none", word) if word else ("none",)
    if value is None or (isinstance(value, str) and value.strip().lower() in words):
        return None
    if value is False and word == "off":
        return None
    try:
        return _coerce(kind.removesuffix(" | None"), value)
    except ValueError as err:
        raise ValueError(f"{err}, or {' / '.join(reversed(words))}") from None


def _coerce(kind: str, value: Any) -> Any:
    if kind not in _EXPECTED:
        return value
    expected = _EXPECTED[kind]
    if value is None:
        raise ValueError(f"empty; expected {expected}")
    if kind == "bool":
        if isinstance(value, bool):
            return value
        raise ValueError(f"expected {expected}")
    if kind == "str":
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ValueError(f"expected {expected}")
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"expected {expected}")
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"expected {expected}") from None
    if not math.isfinite(number):
        raise ValueError("expected a finite number")
    if kind == "float":
        return number
    if not number.is_integer():
        raise ValueError(f"expected {expected}")
    return int(number)


def optional_arg(kind: str, word: str):
    """An argparse type for an optional field: a number of `kind`, or `word` / "none" (kept as
    the word: `coerce` turns it into None, while argparse's None still means "not given")."""

    def parse(text: str):
        if text.strip().lower() in (word, "none"):
            return text.strip().lower()
        try:
            return _coerce(kind, text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(f"{err} or {word}; got {text!r}") from None

    parse.__name__ = f"{kind} or {word}"  # argparse names the type in its error
    return parse


def is_old_sentinel(value: Any, old: tuple) -> bool:
    """`value` is one of a field's old sentinels (`old`: e.g. eval_every 0, max_steps -1); a bool
    never is (True == 1 in Python)."""
    return not isinstance(value, bool) and value in old


def upgrade_sentinel(name: str, value: Any, old: tuple, word: str, meaning: str) -> Any:
    """None for a field's old sentinel (`is_old_sentinel`), with one FutureWarning line saying what
    to write instead; anything else as it is."""
    if not is_old_sentinel(value, old):
        return value
    flag = "--" + name.replace("_", "-")
    warnings.warn(
        f"{name}: {value:g} for '{meaning}' is deprecated: write {name}: null in YAML (None in "
        f"Python, {flag} {word} on the command line)",
        FutureWarning,
        stacklevel=4,
    )
    return None


def read_yaml(path: str | Path) -> dict[str, Any]:
    """The mapping in a config file, with a clear error for a missing or malformed file."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"Config file {path} does not exist.")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"Config file {path} is not valid YAML: {err}") from err
    if not isinstance(values, dict):
        raise ValueError(
            f"Config file {path} must hold a mapping of field: value; got {type(values).__name__}."
        )
    return values
