"""Argument checks shared across the packages: the ValueError rules of docs/input_policy.md in one place."""
from __future__ import annotations

import numbers


def count(name: str, value: object, minimum: int = 1, allow_none: bool = False) -> None:
    """ValueError naming `name` and `value` unless it is a Python/numpy int >= `minimum` (bools rejected);
    None passes when `allow_none`."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        expected = f"an int >= {minimum}" + (" or None" if allow_none else "")
        raise ValueError(f"{name} must be {expected}; got {value!r}")
