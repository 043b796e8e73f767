"""Seeds as the paper makes them (Section 4.3).

`set_seed(n)` seeds every generator of a run from `make_complex(n)`, and it
records that seed for the initial weights of the model zoo, which do not
come from the backend's generator: `keras_bninit.initializers` draws each
variable's values with NumPy from `variable_seed(key)`, so a seed gives the
same network on TensorFlow, JAX and PyTorch.
"""

import collections
import hashlib
import random

from keras_bninit._validation import non_negative_int

# The seed of the initial weights: the complex seed of the last `set_seed`
# (None before the first), and how many initial values each variable key
# has had since then.
_WEIGHTS = {"seed": None, "draws": collections.Counter()}


def make_complex(seed):
    """Turns a small run seed into the paper's "complex" 32-bit seed.

    The value is the last 32 bits of the MD5 digest of `str(seed)`:
    `int(md5(str(seed).encode("utf-8")).hexdigest()[-8:], 16)`. It is unique
    for seeds 0..88265 (Section 4.3), and it is what seeds every random
    number generator of a run.

    Args:
        seed: non-negative integer, the run's seed (1..15 in the paper).

    Returns:
        An int in [0, 2**32).
    """
    seed = non_negative_int("seed", seed)
    digest = hashlib.md5(str(seed).encode("utf-8")).hexdigest()
    return int(digest[-8:], 16)


def set_seed(seed, deterministic=True):
    """Seeds Python, NumPy and the Keras backend from `make_complex(seed)`.

    Works on every Keras backend: `keras.utils.set_random_seed` seeds
    Python, NumPy and the backend's own generator (TensorFlow's global seed,
    torch's manual seed; JAX is seeded through Keras's seed generator).
    It also becomes the seed of the initial weights of the model zoo and of
    any `keras_bninit.initializers` initializer made afterwards, and restarts
    their count (see `variable_seed`): the same seed then builds the same
    weights again, on every backend.

    Args:
        seed: non-negative integer run seed (Section 4.3: every run of a
            configuration uses its own seed, made "complex" by hashing).
        deterministic: when true, also makes the backend's kernels
            deterministic: on TensorFlow, op determinism
            (`tf.config.experimental.enable_op_determinism`, after which
            Keras runs without XLA and which cannot be turned off again
            within a process); on PyTorch,
            `torch.use_deterministic_algorithms(True, warn_only=True)`.
            JAX on the CPU is deterministic already.

    Returns:
        The complex seed that was used.
    """
    import keras

    complex_seed = make_complex(seed)
    keras.utils.set_random_seed(complex_seed)
    _WEIGHTS["seed"] = complex_seed
    _WEIGHTS["draws"].clear()
    if deterministic:
        backend = keras.backend.backend()
        if backend == "tensorflow":
            import tensorflow as tf

            tf.config.experimental.enable_op_determinism()
        elif backend == "torch":
            import torch

            torch.use_deterministic_algorithms(True, warn_only=True)
    return complex_seed


def weight_draws():
    """`(seed, draws)`: the seed of the initial weights (None before the
    first `set_seed`) and a copy of the count of `variable_seed`'s draws of
    each key since that call (a `collections.Counter`)."""
    return _WEIGHTS["seed"], collections.Counter(_WEIGHTS["draws"])


def variable_seed(key):
    """The seed and index of the next initial value of the variable `key`.

    After `set_seed(n)`, the i-th initializer made for `key` (i = 0, 1, ...)
    gets `(make_complex(n), i)`: the first model built after `set_seed` gets
    index 0 for every variable, a second model built after the same call
    gets index 1 and so different weights (as consecutive draws of a seeded
    generator differ), and calling `set_seed(n)` again starts over. The
    count is kept here, in Python, so it is the same on every backend.

    Before any `set_seed` the seed is drawn from Python's `random` module,
    as Keras's own unseeded initializers draw theirs: fresh in each process
    unless `random` is seeded (`keras.utils.set_random_seed` seeds it), and
    the index is 0.

    Args:
        key: a string naming the variable, e.g. its path `"conv1/kernel"`.

    Returns:
        `(seed, index)`: an int in [0, 2**32) and an int >= 0.
    """
    if _WEIGHTS["seed"] is None:
        return random.getrandbits(32), 0
    index = _WEIGHTS["draws"][key]
    _WEIGHTS["draws"][key] += 1
    return _WEIGHTS["seed"], index
