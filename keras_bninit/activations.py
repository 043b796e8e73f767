"""Std of an activation of a unit Gaussian (paper Sections 3.3-3.4).

The BN input normalization starts its scale at `c * sigma_act`, where
`sigma_act` is the std of `act(z)` for `z ~ N(0, 1)`: the spread a BN output
with gamma = 1 has after the activation. For ReLU it is
`sqrt(1/2 - 1/(2 pi)) = 0.5838...` (the paper rounds it to 0.58).
"""

import functools
import math

import numpy as np
from scipy import integrate, special

from keras_bninit._validation import is_real, positive_float

# NumPy versions of the activations, matching Keras's definitions and
# defaults (e.g. `keras.activations.leaky_relu` uses negative_slope=0.2 and
# `keras.activations.gelu` the exact erf form).
_ACTIVATIONS = {
    "linear": lambda z: z,
    "relu": lambda z: np.maximum(z, 0.0),
    "relu6": lambda z: np.clip(z, 0.0, 6.0),
    "gelu": lambda z: z * special.ndtr(z),
    "silu": lambda z: z * special.expit(z),
    "swish": lambda z: z * special.expit(z),
    "elu": lambda z: np.where(z > 0, z, np.expm1(np.minimum(z, 0.0))),
    "selu": lambda z: (
        1.0507009873554805
        * np.where(z > 0, z, 1.6732632423543772 * np.expm1(np.minimum(z, 0.0)))
    ),
    "leaky_relu": lambda z: np.where(z > 0, z, 0.2 * z),
    "tanh": np.tanh,
    "sigmoid": special.expit,
    "softplus": lambda z: np.logaddexp(0.0, z),
}


def available_activations():
    """Names that `activation_std` accepts."""
    return sorted(_ACTIVATIONS)


@functools.cache
def _std_of(name):
    act = _ACTIVATIONS[name]

    def moment(power):
        def integrand(z):
            return act(z) ** power * math.exp(-0.5 * z * z)

        value, _ = integrate.quad(integrand, -np.inf, np.inf, limit=200)
        return value / math.sqrt(2.0 * math.pi)

    mean = moment(1)
    return math.sqrt(max(moment(2) - mean * mean, 0.0))


def activation_std(activation="relu"):
    """Std of `activation(z)` for `z ~ N(0, 1)`, by numerical integration.

    Used to initialize the BN input normalization's scale to
    `c * activation_std` (Section 3.4); for ReLU this is 0.5838 (Section
    3.3). A number is passed through after validation, so callers can give
    either a name or the value itself (the paper uses 0.58).

    Args:
        activation: an activation name (see `available_activations()`:
            relu, relu6, gelu, silu/swish, elu, selu, leaky_relu, tanh,
            sigmoid, softplus, linear) or a positive number.

    Returns:
        A positive float.

    Example:

    ```python
    kb.activation_std("relu")  # 0.5838 = sqrt(1/2 - 1/(2 pi)), Section 3.3
    kb.activation_std("silu")  # 0.5595
    kb.InputBatchNorm(gamma=0.1, activation_std="silu")  # scale 0.05595
    ```
    """
    if is_real(activation):
        return positive_float("activation_std", activation)
    if not isinstance(activation, str) or activation not in _ACTIVATIONS:
        raise ValueError(
            "`activation_std` must be a positive number or one of "
            f"{available_activations()}. Received: {activation!r}"
        )
    return _std_of(activation)
