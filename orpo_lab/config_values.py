"""Plain values (YAML, a form, JSON, the command line) as TrainConfig's field types, and config
files read with a clear message when they are missing or malformed."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import yaml

_EXPECTED = {"int": "a whole number", "float": "a number", "str": "text", "bool": "true or false"}


def coerce(kind: str, value: Any) -> Any:
    """`value` as the field type `kind` ("int", "float", "str", "bool"); ValueError if it is not one."""
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
