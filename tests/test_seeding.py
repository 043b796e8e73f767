"""make_complex and set_seed (Section 4.3)."""

import keras
import numpy as np
import pytest

import keras_bninit as kb


def test_make_complex_is_last_32_bits_of_md5():
    # md5("0") = cfcd208495d565ef66e7dff9f98764da
    # md5("1") = c4ca4238a0b923820dcc509a6f75849b
    assert kb.make_complex(0) == 0xF98764DA
    assert kb.make_complex(1) == 0x6F75849B
    assert kb.make_complex(np.int64(1)) == 0x6F75849B


def test_make_complex_unique_for_paper_range():
    values = {kb.make_complex(s) for s in range(0, 88266)}
    assert len(values) == 88266
    assert all(0 <= v < 2**32 for v in values)


@pytest.mark.parametrize("bad", [-1, 1.5, "3", True, None])
def test_make_complex_rejects(bad):
    with pytest.raises(ValueError, match="non-negative integer"):
        kb.make_complex(bad)


def test_set_seed_reproduces_every_generator():
    import random

    def draw():
        return (
            random.random(),
            np.random.rand(),
            keras.ops.convert_to_numpy(keras.random.normal((3,))).tolist(),
            keras.ops.convert_to_numpy(
                keras.initializers.GlorotUniform()((2, 2))
            ).tolist(),
        )

    assert kb.set_seed(3, deterministic=False) == kb.make_complex(3)
    first = draw()
    kb.set_seed(3, deterministic=False)
    assert draw() == first
    kb.set_seed(4, deterministic=False)
    assert draw() != first


def test_set_seed_seeds_and_restarts_the_initial_weights():
    from keras_bninit.seeding import variable_seed

    kb.set_seed(3, deterministic=False)
    seed = kb.make_complex(3)
    assert variable_seed("conv1/kernel") == (seed, 0)
    assert variable_seed("conv1/kernel") == (seed, 1)
    assert variable_seed("fc/kernel") == (seed, 0)
    kb.set_seed(3, deterministic=False)
    assert variable_seed("conv1/kernel") == (seed, 0)


def test_initial_weights_before_set_seed_draw_from_python_random(monkeypatch):
    """As Keras's unseeded initializers: a seed from Python's `random`, so
    keras.utils.set_random_seed (or random.seed) makes them reproducible."""
    import random

    from keras_bninit import seeding

    monkeypatch.setitem(seeding._WEIGHTS, "seed", None)
    keras.utils.set_random_seed(11)
    first = seeding.variable_seed("conv1/kernel")
    assert first == (random.Random(11).getrandbits(32), 0)
    assert seeding.variable_seed("conv1/kernel") != first
    keras.utils.set_random_seed(11)
    assert seeding.variable_seed("conv1/kernel") == first
