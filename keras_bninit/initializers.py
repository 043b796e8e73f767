"""Initial weights from the run's seed, the same on every Keras backend.

Keras's initializers draw from the backend's own generator, so one seed
gives different networks on TensorFlow, JAX and PyTorch. The initializers
here compute their values with NumPy from a seed and a key naming the
variable (Section 4.3: the complex seed "seeds every RNG used"), and hand
them to the backend only as a finished array.

The model zoo uses them for every random weight; a Keras layer made
elsewhere keeps Keras's own initializers unless it is given one of these.

    import keras
    import keras_bninit as kb

    kb.set_seed(1)
    init = kb.initializers.VarianceScaling(
        scale=2.0, mode="fan_in", distribution="untruncated_normal",
        key="head/kernel",
    )
    layer = keras.layers.Dense(10, kernel_initializer=init, name="head")
"""

import hashlib
import math

import keras
import numpy as np

from keras_bninit._validation import choice, non_negative_int, positive_float
from keras_bninit.seeding import variable_seed

MODES = ("fan_in", "fan_out", "fan_avg")
DISTRIBUTIONS = ("truncated_normal", "untruncated_normal", "uniform")

# The std of a standard normal truncated to [-2, 2]: Keras divides by it so
# that the truncated values keep the intended std.
_TRUNCATED_STD = 0.87962566103423978
_NUMPY_FLOATS = ("float16", "float32", "float64")


def compute_fans(shape):
    """(fan_in, fan_out) of a weight of `shape`, in Keras's layout.

    A dense kernel is (inputs, outputs); a convolution kernel is
    (*spatial, in_channels, out_channels), each fan multiplied by the
    receptive field (the product of the spatial sizes); a vector has
    fan_in = fan_out = its length, a scalar 1.
    """
    shape = tuple(int(d) for d in shape)
    if not shape:
        return 1, 1
    if len(shape) == 1:
        return shape[0], shape[0]
    receptive_field = math.prod(shape[:-2])
    return shape[-2] * receptive_field, shape[-1] * receptive_field


def generator(seed, key, index=0):
    """The NumPy generator of one variable's initial values.

    It is NumPy's legacy `RandomState` interface over a PCG64 bit generator
    seeded by `SeedSequence([seed, index, md5(key)])`: NumPy keeps the
    streams of `RandomState`'s methods fixed across its versions, so the
    initial weights of a seed stay the same after an upgrade.

    Args:
        seed: an int >= 0, the run's complex seed (`make_complex(n)`).
        key: the variable's key (any string; the zoo uses its path).
        index: an int >= 0, which draw of `key` under `seed`.
    """
    key_hash = int(hashlib.md5(key.encode("utf-8")).hexdigest(), 16)
    sequence = np.random.SeedSequence([seed, index, key_hash])
    return np.random.RandomState(np.random.PCG64(sequence))


def variance_scaling_values(shape, scale, mode, distribution, rng):
    """Keras's `VarianceScaling` distribution sampled with NumPy (float64).

    With n the fan of `mode` (fan_in, fan_out, or their mean, at least 1):
    `"untruncated_normal"` is N(0, scale / n); `"truncated_normal"` draws
    N(0, s^2) with s = sqrt(scale / n) / 0.8796 and redraws values beyond
    2 s, which leaves std sqrt(scale / n); `"uniform"` is U(-limit, limit)
    with limit = sqrt(3 scale / n). Kaiming normal (He et al., the paper's
    Section 4.1 for convolutions) is scale 2, fan_in, untruncated.

    Args:
        shape: the weight's shape.
        scale, mode, distribution: as `keras.initializers.VarianceScaling`.
        rng: the variable's generator (`generator(seed, key, index)`).

    Returns:
        A float64 `np.ndarray` of `shape`.
    """
    fan_in, fan_out = compute_fans(shape)
    fan = {"fan_in": fan_in, "fan_out": fan_out}.get(
        mode, (fan_in + fan_out) / 2.0
    )
    scale = scale / max(1.0, fan)
    if distribution == "uniform":
        limit = math.sqrt(3.0 * scale)
        return rng.uniform(-limit, limit, size=shape)
    values = rng.standard_normal(size=shape)
    if distribution == "untruncated_normal":
        return values * math.sqrt(scale)
    outside = np.abs(values) > 2.0
    while outside.any():
        values[outside] = rng.standard_normal(size=int(outside.sum()))
        outside = np.abs(values) > 2.0
    return values * (math.sqrt(scale) / _TRUNCATED_STD)


def _to_tensor(values, dtype):
    """A float64 NumPy array as a backend tensor of `dtype`."""
    dtype = keras.backend.standardize_dtype(dtype or keras.backend.floatx())
    if dtype in _NUMPY_FLOATS:
        return keras.ops.convert_to_tensor(values.astype(dtype), dtype=dtype)
    # bfloat16 and other dtypes NumPy lacks: round through float32.
    tensor = keras.ops.convert_to_tensor(values.astype("float32"))
    return keras.ops.cast(tensor, dtype)


@keras.saving.register_keras_serializable(package="keras_bninit")
class VarianceScaling(keras.initializers.Initializer):
    """`keras.initializers.VarianceScaling`, drawn with NumPy from a seed.

    The same distributions as Keras's initializer of the same name (see
    `variance_scaling_values`), but the values come from
    `generator(seed, key, index)`, not from the backend's generator, so
    they are the same on TensorFlow, JAX and PyTorch and depend only on the
    seed, the key and the weight's shape. Calling it twice gives the same
    values, like a Keras initializer with an integer seed.

    The seed is fixed when the initializer is made: by default from
    `keras_bninit.seeding.variable_seed(key)`, i.e. the seed of the last
    `keras_bninit.set_seed` and the count of earlier initializers of `key`
    since then (or a seed drawn from Python's `random` before any
    `set_seed`). `get_config` records the resolved seed and index, so a
    model rebuilt from its config (`keras.models.clone_model`, loading a
    `.keras` file) starts from the same values.

    Args:
        scale: a finite number > 0, the variance's numerator.
        mode: `"fan_in"`, `"fan_out"` or `"fan_avg"`.
        distribution: `"truncated_normal"` (`"normal"` is an alias, as in
            Keras), `"untruncated_normal"` or `"uniform"`.
        key: a string naming the variable; keys keep variables of one
            seed apart. The model zoo uses each variable's path,
            e.g. `"conv1/kernel"`.
        seed: an int >= 0, or None to take it from `variable_seed(key)`.
        index: an int >= 0, which draw of `key` under `seed` (0 when
            `seed` is given without it); only with an explicit `seed`.

    Reference:
        Davis & Frank, "Revisiting Batch Norm Initialization", ECCV 2022,
        Section 4.1 (initialization), Section 4.3 (seeds).
    """

    def __init__(
        self,
        scale=1.0,
        mode="fan_in",
        distribution="truncated_normal",
        key="",
        seed=None,
        index=None,
    ):
        self.scale = positive_float("scale", scale)
        choice("mode", mode, MODES)
        if distribution == "normal":
            distribution = "truncated_normal"
        choice("distribution", distribution, DISTRIBUTIONS)
        if not isinstance(key, str):
            raise ValueError(f"`key` must be a string. Received: key={key!r}")
        self.mode = mode
        self.distribution = distribution
        self.key = key
        if seed is None:
            if index is not None:
                raise ValueError(
                    "`index` goes with an explicit `seed`; without one both "
                    "come from `keras_bninit.seeding.variable_seed`. "
                    f"Received: seed=None, index={index!r}"
                )
            seed, index = variable_seed(key)
        self.seed = non_negative_int("seed", seed)
        self.index = non_negative_int("index", 0 if index is None else index)

    def values(self, shape):
        """The initial values for `shape` as a float64 NumPy array."""
        rng = generator(self.seed, self.key, self.index)
        return variance_scaling_values(
            shape, self.scale, self.mode, self.distribution, rng
        )

    def __call__(self, shape, dtype=None):
        return _to_tensor(self.values(shape), dtype)

    def get_config(self):
        return {
            "scale": self.scale,
            "mode": self.mode,
            "distribution": self.distribution,
            "key": self.key,
            "seed": self.seed,
            "index": self.index,
        }
