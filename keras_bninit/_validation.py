"""Argument checks shared by the library (one clear error per bad value)."""

import math
import numbers


def positive_float(name, value, allow_zero=False):
    """Returns `value` as a float, or raises `ValueError` naming it.

    Args:
        name: the argument's name, used in the message.
        value: the value to check; a real number (not a bool), finite.
        allow_zero: whether 0 is valid (`>= 0` instead of `> 0`).
    """
    valid = ">= 0" if allow_zero else "> 0"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(
            f"`{name}` must be a finite real number {valid}. "
            f"Received: {name}={value!r}"
        )
    value = float(value)
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise ValueError(
            f"`{name}` must be a finite real number {valid}. "
            f"Received: {name}={value!r}"
        )
    return value


def non_negative_int(name, value):
    """Returns `value` as an int, or raises `ValueError` naming it."""
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Integral)
        or value < 0
    ):
        raise ValueError(
            f"`{name}` must be a non-negative integer. "
            f"Received: {name}={value!r}"
        )
    return int(value)


def positive_int(name, value):
    """Returns `value` if it is an int >= 1 (not a bool), else raises."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(
            f"`{name}` must be a positive integer (>= 1). "
            f"Received: {name}={value!r}"
        )
    return value


def reject_arguments(owner, kwargs, keys, reason):
    """Raises `ValueError` for the first of `keys` present in `kwargs`.

    Args:
        owner: the class name, for the message.
        kwargs: the keyword arguments received.
        keys: the argument names `owner` does not take.
        reason: why, completing "<owner> <reason>; it does not take ...".
    """
    for key in keys:
        if key in kwargs:
            raise ValueError(
                f"{owner} {reason}; it does not take `{key}`. "
                f"Received: {key}={kwargs[key]!r}"
            )
