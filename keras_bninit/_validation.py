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
    """Returns `value` as an int if it is an integer >= 1 (NumPy integers
    included, bools not), else raises `ValueError` naming it."""
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Integral)
        or value < 1
    ):
        raise ValueError(
            f"`{name}` must be a positive integer (>= 1). "
            f"Received: {name}={value!r}"
        )
    return int(value)


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


def choice(name, value, choices):
    """Returns `value` if it is one of `choices` (of the same type), else
    raises `ValueError` naming it and every valid choice."""
    if any(type(value) is type(c) and value == c for c in choices):
        return value
    valid = (
        "True or False"
        if set(choices) == {True, False}
        else "one of " + ", ".join(str(c) for c in choices)
    )
    raise ValueError(f"`{name}` must be {valid}. Received: {name}={value!r}")


# The smallest (subnormal) and largest finite float32 magnitudes.
_FLOAT32_TINY = 2.0**-149
_FLOAT32_MAX = 3.4028234663852886e38


def finite_float32(name, value):
    """Returns `value` if it stays finite, and non-zero when non-zero, in
    float32 (about 1e-38 to 3.4e38 in magnitude), else raises."""
    magnitude = abs(float(value))
    if magnitude != 0 and not _FLOAT32_TINY <= magnitude <= _FLOAT32_MAX:
        raise ValueError(
            f"`{name}` must be representable in float32 (finite, and "
            f"non-zero when non-zero: about 1e-38 to 3.4e38). Received: "
            f"{name}={value!r}"
        )
    return value
