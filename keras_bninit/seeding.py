"""Seeds as the paper makes them (SPEC section 10)."""

import hashlib

from keras_bninit._validation import non_negative_int


def make_complex(seed):
    """Turns a small run seed into the paper's "complex" 32-bit seed.

    The value is the last 32 bits of the MD5 digest of `str(seed)`:
    `int(md5(str(seed).encode("utf-8")).hexdigest()[-8:], 16)`. It is unique
    for seeds 0..88265 (SPEC section 10), and it is what seeds every random
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
    """Seeds Python, NumPy and TensorFlow/Keras from `make_complex(seed)`.

    Args:
        seed: non-negative integer run seed (SPEC section 10).
        deterministic: when true, also turns on TensorFlow's op determinism
            (`tf.config.experimental.enable_op_determinism`), so two runs with
            the same seed give the same numbers. Keras then runs without XLA.
            TensorFlow cannot turn determinism off again within a process.

    Returns:
        The complex seed that was used.
    """
    import keras
    import tensorflow as tf

    complex_seed = make_complex(seed)
    keras.utils.set_random_seed(complex_seed)
    if deterministic:
        tf.config.experimental.enable_op_determinism()
    return complex_seed
