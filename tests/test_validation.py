"""keras_bninit._validation, and its checks where the library takes
arguments: NumPy integers pass wherever ints do, bools never pass as
numbers, and each bad value raises one ValueError naming it and what is
valid."""

import keras
import numpy as np
import pytest

import keras_bninit as kb
from keras_bninit import _validation as v
from keras_bninit import models
from keras_bninit.initializers import VarianceScaling

NUMPY_INTS = [np.int8(3), np.int32(3), np.int64(3), np.uint16(3)]


@pytest.mark.parametrize("value", [3, *NUMPY_INTS])
def test_integers_numpy_ones_included(value):
    for check in (v.positive_int, v.non_negative_int):
        result = check("n", value)
        assert result == 3 and type(result) is int
    assert v.integer("n", value, 3) == 3
    assert v.positive_ints("n", [value, value]) == (3, 3)
    assert v.positive_ints("n", np.array([3, 4])) == (3, 4)


@pytest.mark.parametrize(
    "check, value, message",
    [
        (v.positive_int, 0, r"`n` must be a positive integer \(>= 1\)\. "),
        (v.positive_int, True, "n=True"),
        (v.positive_int, 2.0, "n=2.0"),
        (v.positive_int, "3", "n='3'"),
        (v.non_negative_int, -1, "`n` must be a non-negative integer. "),
        (lambda n, x: v.integer(n, x, 2), np.int64(1), "an integer >= 2. "),
        (lambda n, x: v.integer(n, x), 1.5, r"`n` must be an integer\. "),
        (v.positive_ints, [1, 0], r"sequence of them\. Received: n=\[1, 0\]"),
        (v.positive_ints, [], r"n=\[\]"),
        (v.fraction, 1.5, r"`n` must be a real number in \[0, 1\]\. "),
        (v.fraction, True, "n=True"),
    ],
)
def test_bad_values_are_named(check, value, message):
    with pytest.raises(ValueError, match=message) as error:
        check("n", value)
    assert str(error.value).endswith(f"Received: n={value!r}")


def test_fraction_and_choice():
    assert v.fraction("m", np.float32(0.5)) == 0.5
    assert v.fraction("m", 1) == 1.0
    assert v.choice("c", None, (True, False, None)) is None
    with pytest.raises(ValueError, match=r"must be True or False\. .*c=1$"):
        v.choice("c", 1, (True, False))  # 1 == True, but not a bool
    with pytest.raises(ValueError, match=r"one of a, b\. Received: c='A'$"):
        v.choice("c", "A", ("a", "b"))


def test_numpy_integers_are_taken_by_the_library():
    model = models.build(
        "resnet8",
        num_classes=np.int64(3),
        input_shape=(np.int64(8), np.int64(8), np.int32(3)),
    )
    assert model.output_shape == (None, 3)
    net = models.resnet.resnet(
        "tiny",
        block="basic",
        layers=np.array([1, 1]),
        widths=(np.int64(4), 8),
        stem_width=np.int64(4),
        num_classes=2,
        input_shape=(8, 8, 3),
    )
    assert net.get_layer("conv1").filters == 4
    layer = kb.InputBatchNorm(0.1, axis=np.int64(-1), momentum=np.float32(0.5))
    assert (layer.axis, layer.momentum) == (-1, 0.5)
    schedule = kb.EpochCosineDecay(0.1, np.int64(10), np.int32(5))
    assert (schedule.steps_per_epoch, schedule.epochs) == (10, 5)
    init = VarianceScaling(seed=np.int64(3), index=np.uint8(1))
    assert (init.seed, init.index) == (3, 1)
    inputs = keras.Input((3,))
    bn_model = keras.Model(inputs, kb.batch_norm(0.5)(inputs))
    x = np.arange(24, dtype="float32").reshape(8, 3)
    used = kb.update_bn_stats(
        bn_model, x, num_batches=np.int64(1), batch_size=np.int64(4)
    )
    assert used == 1
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(bn_model.layers[-1].moving_mean),
        x[:4].mean(axis=0),
    )


@pytest.mark.parametrize(
    "make, message",
    [
        (
            lambda: kb.RepresentativeBatchNorm(instance_statistic=1),
            r"`instance_statistic` must be True or False\. "
            r"Received: instance_statistic=1",
        ),
        (
            lambda: kb.EpochCosineDecay(0.1, 1, 1, per_group_floor="yes"),
            r"`per_group_floor` must be True or False\. .*='yes'",
        ),
        (
            lambda: kb.tag_variable(keras.Variable(1.0), "fast"),
            r"`group` must be one of scale, decay, no_decay\. .*group='fast'",
        ),
        (
            lambda: VarianceScaling(mode="fan"),
            r"`mode` must be one of fan_in, fan_out, fan_avg\. .*mode='fan'",
        ),
        (
            lambda: VarianceScaling(distribution="gaussian"),
            r"one of truncated_normal, untruncated_normal, uniform\. ",
        ),
        (
            lambda: models.build("resnet8", small_inputs="yes"),
            r"`small_inputs` must be one of True, False, None\. ",
        ),
        (
            lambda: models.build("resnet8", input_bn=1),
            r"`input_bn` must be True or False\. Received: input_bn=1",
        ),
        (
            lambda: models.resnet.resnet(block="wide", layers=(1,)),
            r"`block` must be one of basic, bottleneck\. .*block='wide'",
        ),
        (
            lambda: models.resnet.resnet(
                block="basic", layers=(1,), widths=(8,), groups=(2,)
            ),
            r"`groups` must be a positive integer .*groups=\(2,\)",
        ),
        (
            lambda: kb.retrofit(
                keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)]),
                input_bn="no",
            ),
            r"`input_bn` must be True or False\. Received: input_bn='no'",
        ),
    ],
)
def test_library_choices_name_the_value_and_the_valid_ones(make, message):
    with pytest.raises(ValueError, match=message):
        make()
