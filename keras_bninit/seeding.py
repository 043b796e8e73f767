"""Seeds as the paper makes them (Section 4.3)."""

import hashlib

from keras_bninit._validation import non_negative_int


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
    if deterministic:
        backend = keras.backend.backend()
        if backend == "tensorflow":
            import tensorflow as tf

            tf.config.experimental.enable_op_determinism()
        elif backend == "torch":
            import torch

            torch.use_deterministic_algorithms(True, warn_only=True)
    return complex_seed
