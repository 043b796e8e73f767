"""How far Keras's forms are from the reference's (PyTorch's), in numbers.

Three places where Keras and the paper's PyTorch reference differ, each an
argument of the library (docs/method.md, "Keras forms and the reference's
forms"):

(a) SGD's momentum form: `keras.optimizers.SGD` vs `keras_bninit.TorchSGD`,
    100 steps of resnet8 on digits (batch 64) with 4 learning-rate changes,
    float64: the distance between the two parameter vectors; and the ratio
    of their total steps for a constant gradient over the paper's schedule.
(b) BN's moving variance: biased (Keras) vs unbiased (PyTorch,
    `moving_variance="unbiased"`): the relative difference 1 / (n - 1) of
    one update, with n the values a channel of the last stage reduces over,
    and the eval-mode logits of resnet8 trained on digits both ways.
(c) The BN scales' learning-rate floor: the whole schedule divided by a
    (`EpochCosineDecay(per_group_floor=False)`) vs PyTorch's per-group
    eta_min (`per_group_floor=True`), at the last epoch of the paper's run.

    python benchmarks/semantics.py [--epochs 5]
"""

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_bninit as kb  # noqa: E402
from keras_bninit import models  # noqa: E402

# ----------------------------------------------------------------- data


def _digits():
    """scikit-learn's digits as (N, 8, 8, 1) floats in [0, 1], labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    return (digits.images[..., None] / 16.0), digits.target


def _resnet8(moving_variance="biased"):
    kb.set_seed(1)
    return models.build(
        "resnet8",
        num_classes=10,
        input_shape=(8, 8, 1),
        bn_gamma=0.1,
        input_bn=True,
        moving_variance=moving_variance,
    )


def _flat(model):
    return np.concatenate(
        [
            keras.ops.convert_to_numpy(v).astype(np.float64).ravel()
            for v in model.trainable_variables
        ]
    )


def _fit(model, optimizer, x, y, batch_size, epochs):
    model.compile(
        optimizer,
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.fit(
        x, y, batch_size=batch_size, epochs=epochs, shuffle=False, verbose=0
    )


def _optimizer(sgd, lr, steps_per_epoch, epochs, per_group_floor=True):
    schedule = kb.EpochCosineDecay(
        lr, steps_per_epoch, epochs, per_group_floor=per_group_floor
    )
    return kb.ParamGroupOptimizer(sgd(schedule, momentum=0.9))


# ----------------------------------------------------- (a) SGD's form


def sgd_forms(x, y):
    """Keras SGD vs TorchSGD after 100 steps (4 rate changes), float64."""
    previous = keras.config.floatx()
    if keras.backend.backend() == "jax":
        import jax

        jax.config.update("jax_enable_x64", True)
    keras.config.set_floatx("float64")
    try:
        steps_per_epoch, epochs, batch = 20, 5, 64
        x = x[: steps_per_epoch * batch]
        y = y[: steps_per_epoch * batch]
        flats = {}
        for name, sgd in (
            ("keras", keras.optimizers.SGD),
            ("torch", kb.TorchSGD),
        ):
            model = _resnet8()
            start = _flat(model)
            _fit(
                model,
                _optimizer(sgd, 0.1, steps_per_epoch, epochs),
                x,
                y,
                batch,
                epochs,
            )
            flats[name] = _flat(model)
    finally:
        keras.config.set_floatx(previous)
    distance = np.linalg.norm(flats["keras"] - flats["torch"])
    travelled = np.linalg.norm(flats["torch"] - start)
    return {
        "steps": steps_per_epoch * epochs,
        "distance": distance,
        "relative_to_travelled": distance / travelled,
        "max_abs": np.abs(flats["keras"] - flats["torch"]).max(),
    }


def sgd_total_step_ratio(epochs=180, steps_per_epoch=352, lr=0.1, m=0.9):
    """Keras's over PyTorch's total step for a constant unit gradient, over
    the paper's schedule (CIFAR: 352 steps per epoch at batch 128)."""
    schedule = kb.EpochCosineDecay(lr, steps_per_epoch, epochs)
    rates = keras.ops.convert_to_numpy(
        schedule(np.arange(epochs * steps_per_epoch))
    ).astype(np.float64)
    keras_v, keras_total, torch_buf, torch_total = 0.0, 0.0, 0.0, 0.0
    for rate in rates:
        keras_v = m * keras_v + rate  # v = m v - lr g, sign dropped
        keras_total += keras_v
        torch_buf = m * torch_buf + 1.0
        torch_total += rate * torch_buf
    return keras_total / torch_total


# --------------------------------------------- (b) the moving variance


def _last_stage_count(model, batch_size, stage):
    """n of the BNs of `stage`: batch size x positions of their input."""
    layer = model.get_layer(f"{stage}_bn2")
    return batch_size * int(np.prod(layer.input.shape[1:-1]))


def moving_variance_forms(x, y, epochs):
    """1 / (n - 1) at the last stage; eval-mode logits trained both ways."""
    counts = {
        "resnet8_digits_b64": _last_stage_count(_resnet8(), 64, "layer3_0"),
        "resnet18_cifar_b128": _last_stage_count(
            models.build("resnet18", num_classes=10, input_shape=(32, 32, 3)),
            128,
            "layer4_1",
        ),
    }
    batch = 64
    steps_per_epoch = len(x) // batch
    x, y = x[: steps_per_epoch * batch], y[: steps_per_epoch * batch]
    logits = {}
    for moving_variance in ("biased", "unbiased"):
        model = _resnet8(moving_variance)
        optimizer = _optimizer(kb.TorchSGD, 0.1, steps_per_epoch, epochs)
        _fit(model, optimizer, x, y, batch, epochs)
        logits[moving_variance] = keras.ops.convert_to_numpy(
            model.predict(x, batch_size=256, verbose=0)
        ).astype(np.float64)
    difference = np.abs(logits["unbiased"] - logits["biased"])
    scale = np.abs(logits["unbiased"]).mean()
    agree = (logits["unbiased"].argmax(1) == logits["biased"].argmax(1)).mean()
    return {
        "n": counts,
        "one_over_n_minus_1": {k: 1 / (n - 1) for k, n in counts.items()},
        "steps": steps_per_epoch * epochs,
        "logit_max_abs": difference.max(),
        "logit_mean_abs_relative": difference.mean() / scale,
        "argmax_agreement": agree,
    }


# ------------------------------------------------ (c) the scales' floor


def scale_floor_forms(epochs=180, eta_min=1e-8, divisor=100.0):
    """The scales' rate in the last epoch: per-group floor vs divided."""
    rows = {}
    for lr in (0.1, 0.001):
        schedule = kb.EpochCosineDecay(
            lr, 1, epochs, eta_min=eta_min, per_group_floor=True
        )
        rate = schedule(epochs - 1)
        per_group = float(schedule.group_learning_rate(rate, 1 / divisor))
        divided = float(rate) / divisor
        rows[lr] = {
            "per_group": per_group,
            "divided": divided,
            "relative": (per_group - divided) / divided,
        }
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--epochs", type=int, default=5, help="epochs of (b)'s training"
    )
    args = parser.parse_args()
    x, y = _digits()
    print(f"backend {keras.backend.backend()}, Keras {keras.__version__}")

    a = sgd_forms(x.astype("float64"), y)
    print(
        f"(a) SGD form, {a['steps']} steps, 4 rate changes, float64: "
        f"|theta_keras - theta_torch| = {a['distance']:.3e} "
        f"({a['relative_to_travelled']:.2%} of the distance travelled), "
        f"max |diff| {a['max_abs']:.3e}"
    )

    ratio = sgd_total_step_ratio()
    print(
        f"(a) SGD form, constant gradient over 180 epochs x 352 steps "
        f"(lr 0.1): Keras's total step / PyTorch's = {ratio:.6f}"
    )

    b = moving_variance_forms(x.astype("float32"), y, args.epochs)
    for key, n in b["n"].items():
        print(
            f"(b) moving variance, {key}: n = {n}, "
            f"1/(n-1) = {b['one_over_n_minus_1'][key]:.3e}"
        )
    print(
        f"(b) resnet8 on digits, {b['steps']} steps, eval-mode logits "
        f"unbiased vs biased: max |diff| {b['logit_max_abs']:.3e}, mean "
        f"|diff| / mean |logit| {b['logit_mean_abs_relative']:.3e}, argmax "
        f"agreement {b['argmax_agreement']:.4f}"
    )

    for lr, row in scale_floor_forms().items():
        print(
            f"(c) scale lr in epoch 180 of 180, lr {lr:g}, a = 100: "
            f"per-group floor {row['per_group']:.4e}, divided "
            f"{row['divided']:.4e}, relative difference "
            f"{row['relative']:.2%}"
        )


if __name__ == "__main__":
    main()
