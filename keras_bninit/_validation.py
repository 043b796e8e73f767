"""Argument checks shared by the library (one clear error per bad value)."""

import math
import numbers


def is_real(value):
    """Whether `value` is a real number: a Python or NumPy one, not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def positive_float(name, value, allow_zero=False):
    """Returns `value` as a float, or raises `ValueError` naming it.

    Args:
        name: the argument's name, used in the message.
        value: the value to check; a real number (not a bool), finite.
        allow_zero: whether 0 is valid (`>= 0` instead of `> 0`).
    """
    valid = ">= 0" if allow_zero else "> 0"
    if not is_real(value):
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


def is_integer(value):
    """Whether `value` is an integer: a Python or NumPy int, not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def integer(name, value, minimum=None, description=None):
    """Returns `value` as an int if it is an integer (NumPy integers
    included, bools not) >= `minimum`, else raises `ValueError` naming it.

    Args:
        name: the argument's name, used in the message.
        value: the value to check.
        minimum: the smallest valid value, or None for any integer.
        description: what the message says `value` must be; by default
            "an integer >= minimum".
    """
    if not is_integer(value) or (minimum is not None and value < minimum):
        if description is None:
            description = "an integer" + (
                "" if minimum is None else f" >= {minimum}"
            )
        raise ValueError(
            f"`{name}` must be {description}. Received: {name}={value!r}"
        )
    return int(value)


def non_negative_int(name, value):
    """Returns `value` as an int if it is an integer >= 0, else raises."""
    return integer(name, value, 0, "a non-negative integer")


def positive_int(name, value):
    """Returns `value` as an int if it is an integer >= 1 (NumPy integers
    included, bools not), else raises `ValueError` naming it."""
    return integer(name, value, 1, "a positive integer (>= 1)")


def positive_ints(name, values):
    """`values` as an int if it is one integer >= 1, else as a tuple of
    them (a non-empty sequence), else raises `ValueError` naming it."""
    if is_integer(values) and values > 0:
        return int(values)
    try:
        checked = tuple(values)
    except TypeError:
        checked = ()
    if not checked or not all(is_integer(v) and v > 0 for v in checked):
        raise ValueError(
            f"`{name}` must be a positive integer or a non-empty sequence of "
            f"them. Received: {name}={values!r}"
        )
    return tuple(int(v) for v in checked)


def fraction(name, value):
    """Returns `value` as a float if it is a real number in [0, 1] (not a
    bool), else raises `ValueError` naming it."""
    if not is_real(value) or not 0.0 <= float(value) <= 1.0:
        raise ValueError(
            f"`{name}` must be a real number in [0, 1]. "
            f"Received: {name}={value!r}"
        )
    return float(value)


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
