"""ParamGroupOptimizer against NumPy optimizers written from Section 3.2."""

import io
import json
import os
import subprocess
import sys
import textwrap
import warnings
import zipfile

import h5py
import keras
import numpy as np
import pytest
from _backend import BACKEND, gradients
from _reference import (
    _per_group_cosine,
    _pytorch_dense_bn_dense,
    dense_bn_dense,
)

import keras_bninit as kb

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
STEPS, BATCH = 4, 8


def _conv_bn_net(gamma=0.1, seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((6, 6, 2))
    x = kb.InputBatchNorm(gamma, name="input_bn")(inputs)
    x = keras.layers.Conv2D(4, 3, use_bias=False, name="conv1")(x)
    x = kb.batch_norm(gamma, name="bn1")(x)
    x = keras.layers.ReLU()(x)
    # No conv bias before a BN: its gradient is round-off, which Adam
    # would blow up to full steps.
    x = keras.layers.Conv2D(5, 3, use_bias=False, name="conv2")(x)
    x = kb.batch_norm(gamma, name="bn2")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(3, name="fc")(x)
    return keras.Model(inputs, outputs)


def _data(seed=1):
    rng = np.random.default_rng(seed)
    x = rng.random((STEPS * BATCH, 6, 6, 2)).astype("float32")
    y = rng.integers(0, 3, STEPS * BATCH)
    return x, y


def _reference_group(variable):
    """Section 3.2 written independently of the library's rule."""
    name = variable.path.split("/")[-1]
    return {"gamma": "scale", "kernel": "decay"}.get(name, "no_decay")


def _torch_sgd(lr, divisor, wd, momentum=0.9):
    """PyTorch SGD with the reference's groups, on NumPy arrays."""
    buffers = {}

    def step(i, group, w, g):
        if group == "decay":
            g = g + wd * w
        buffers[i] = g if i not in buffers else momentum * buffers[i] + g
        return w - (lr / divisor if group == "scale" else lr) * buffers[i]

    return step


def _adam(lr, divisor, wd, b1=0.9, b2=0.999, eps=1e-7):
    """Adam as Keras writes it (eps outside the bias correction), with L2."""
    state = {}

    def step(i, group, w, g):
        if group == "decay":
            g = g + wd * w
        m, v, t = state.get(i, (0.0, 0.0, 0))
        t += 1
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        state[i] = (m, v, t)
        group_lr = lr / divisor if group == "scale" else lr
        alpha = group_lr * np.sqrt(1 - b2**t) / (1 - b1**t)
        return w - alpha * m / (np.sqrt(v) + eps)

    return step


def _grads(model, x, y, loss_scale=1.0):
    """The loss's gradients (NumPy) for the model's trainable variables, on
    whichever backend Keras runs; with `loss_scale`, of the scaled loss,
    then unscaled (as a LossScaleOptimizer does)."""
    _, grads = gradients(
        lambda: LOSS(y, model(x, training=True)) * loss_scale,
        model.trainable_variables,
    )
    return [g / loss_scale for g in grads]


def _run_reference(model, x, y, step, loss_scale=1.0):
    """Trains `model` with hand-written updates on the gradients of TF."""
    variables = model.trainable_variables
    groups = [_reference_group(v) for v in variables]
    for s in range(STEPS):
        xb, yb = x[s * BATCH : (s + 1) * BATCH], y[s * BATCH : (s + 1) * BATCH]
        grads = _grads(model, xb, yb, loss_scale)
        for i, (v, g) in enumerate(zip(variables, grads)):
            new = step(i, groups[i], v.numpy().astype("float64"), g)
            v.assign(new.astype("float32"))


@pytest.mark.parametrize(
    "make_inner, reference, jit",
    [
        (lambda: keras.optimizers.SGD(0.1, momentum=0.9), _torch_sgd, False),
        (lambda: keras.optimizers.SGD(0.1, momentum=0.9), _torch_sgd, True),
        (lambda: keras.optimizers.Adam(0.01), _adam, False),
    ],
    ids=["sgd", "sgd-xla", "adam"],
)
def test_fit_matches_numpy_optimizer(make_inner, reference, jit):
    if jit and BACKEND == "torch":
        pytest.skip("jit_compile on PyTorch is torch.compile, not XLA")
    x, y = _data()
    model, ref = _conv_bn_net(), _conv_bn_net()
    ref.set_weights(model.get_weights())
    lr = float(make_inner().learning_rate)
    opt = kb.ParamGroupOptimizer(
        make_inner(), gamma_lr_divisor=100.0, weight_decay=1e-4
    )
    model.compile(opt, LOSS, jit_compile=jit)
    model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
    assert model.jit_compile is jit  # no silent fallback from XLA
    _run_reference(ref, x, y, reference(lr, 100.0, 1e-4))
    assert int(opt.iterations.numpy()) == STEPS
    for v, r in zip(model.trainable_variables, ref.trainable_variables):
        np.testing.assert_allclose(
            v.numpy(), r.numpy(), rtol=2e-5, atol=1e-6, err_msg=v.path
        )
    # The gammas did move (so the comparison above is not vacuous).
    assert np.abs(model.get_layer("bn1").gamma.numpy() - 0.1).max() > 1e-6


def test_adam_divisor_scales_step_not_gradient():
    """Scaling Adam's gradient by 1/a would leave its step unchanged."""
    gamma = keras.Variable(np.ones(3, "float32"), name="gamma")
    opt = kb.ParamGroupOptimizer(keras.optimizers.Adam(0.1))
    opt.apply([np.full(3, 5.0, "float32")], [gamma])
    # First Adam step is lr * sign(g) (eps aside); the divisor makes it lr/a.
    np.testing.assert_allclose(gamma.numpy(), 1 - 0.1 / 100, rtol=1e-6)


def test_schedule_reaches_gammas_divided_at_every_step():
    schedule = keras.optimizers.schedules.PiecewiseConstantDecay(
        [2, 4], [0.1, 0.05, 0.01]
    )
    rng = np.random.default_rng(0)
    gamma = keras.Variable(np.ones(3, "float32"), name="gamma")
    kernel = keras.Variable(
        rng.normal(size=(2, 3)).astype("float32"), name="kernel"
    )
    bias = keras.Variable(np.zeros(3, "float32"), name="bias")
    opt = kb.ParamGroupOptimizer(
        keras.optimizers.SGD(schedule), gamma_lr_divisor=100, weight_decay=0.01
    )
    for t in range(6):
        lr = float(schedule(t))
        assert float(opt.learning_rate) == pytest.approx(lr)
        grads = [
            rng.normal(size=v.shape).astype("float32")
            for v in (gamma, kernel, bias)
        ]
        before = [v.numpy() for v in (gamma, kernel, bias)]
        opt.apply(grads, [gamma, kernel, bias])
        np.testing.assert_allclose(
            gamma.numpy(), before[0] - lr / 100 * grads[0], rtol=1e-6
        )
        np.testing.assert_allclose(
            kernel.numpy(),
            before[1] - lr * (grads[1] + 0.01 * before[1]),
            rtol=1e-5,
            atol=1e-7,
        )
        np.testing.assert_allclose(
            bias.numpy(), before[2] - lr * grads[2], rtol=1e-6, atol=1e-8
        )


def test_inner_decoupled_decay_only_on_kernels():
    gamma = keras.Variable(np.ones(3, "float32"), name="gamma")
    kernel = keras.Variable(np.ones((2, 3), "float32"), name="kernel")
    opt = kb.ParamGroupOptimizer(
        keras.optimizers.AdamW(0.1, weight_decay=0.5), weight_decay=0.0
    )
    zeros = [np.zeros(3, "float32"), np.zeros((2, 3), "float32")]
    opt.apply(zeros, [gamma, kernel])
    np.testing.assert_allclose(gamma.numpy(), 1.0)
    np.testing.assert_allclose(kernel.numpy(), 1 - 0.1 * 0.5, rtol=1e-6)


def test_describe_lists_groups_of_nested_models():
    inner = _conv_bn_net()
    inputs = keras.Input((6, 6, 2))
    outer = keras.Model(inputs, inner(inputs))
    opt = kb.ParamGroupOptimizer(keras.optimizers.SGD(0.1))
    text = opt.describe(outer.trainable_variables)
    lines = {line.split()[0]: line.split() for line in text.splitlines()}
    assert lines["input_bn/gamma"][-3:] == ["scale", "0.01", "0"]
    assert lines["bn2/gamma"][-3:] == ["scale", "0.01", "0"]
    assert lines["bn2/beta"][-3:] == ["no_decay", "1", "0"]
    assert lines["conv2/kernel"][-3:] == ["decay", "1", "0.0001"]
    assert lines["fc/bias"][-3:] == ["no_decay", "1", "0"]
    assert lines["fc/kernel"][-3:] == ["decay", "1", "0.0001"]
    assert text.splitlines()[-1].startswith("groups: scale=3, decay=3")
    with pytest.raises(ValueError, match="describe"):
        opt.describe()


def test_rules_are_overridable():
    model = _conv_bn_net()
    opt = kb.ParamGroupOptimizer(
        keras.optimizers.SGD(0.1),
        no_decay_patterns=r"^fc/",
        scale_patterns="conv1/kernel",
        classify=lambda v: "decay" if v.path == "bn2/beta" else None,
    )
    groups = {v.path: opt.group_of(v) for v in model.trainable_variables}
    assert groups["fc/kernel"] == "no_decay"
    assert groups["conv1/kernel"] == "scale"
    assert groups["bn2/beta"] == "decay"
    assert groups["conv2/kernel"] == "decay"
    tagged = kb.tag_variable(keras.Variable(1.0, name="rho"), "scale")
    assert opt.group_of(tagged) == "scale"
    assert kb.default_group(keras.Variable(1.0, name="rho")) == "no_decay"


def _fitted_net(seed=0):
    """A `_conv_bn_net` trained one epoch with SGD and momentum."""
    x, y = _data()
    model = _conv_bn_net(seed=seed)
    model.compile(
        kb.ParamGroupOptimizer(
            keras.optimizers.SGD(0.1, momentum=0.9), gamma_lr_divisor=50
        ),
        LOSS,
    )
    model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
    return model


def _save(model, path):
    if str(path).endswith(".keras"):
        model.save(path)
    else:
        model.save_weights(path)


def _load(path):
    """The model saved at `path`, loaded as `fit` would train it on."""
    if str(path).endswith(".keras"):
        return keras.models.load_model(path)
    model = _conv_bn_net(seed=1)  # other initial values, overwritten
    model.compile(
        kb.ParamGroupOptimizer(
            keras.optimizers.SGD(0.1, momentum=0.9), gamma_lr_divisor=50
        ),
        LOSS,
    )
    model.optimizer.build(model.trainable_variables)
    model.load_weights(path)
    return model


def _datasets(path):
    """{dataset path: bytes} in a `.weights.h5` file or a `.keras` archive."""
    if str(path).endswith(".keras"):
        with zipfile.ZipFile(path) as archive:
            path = io.BytesIO(archive.read("model.weights.h5"))
    sizes = {}
    with h5py.File(path, "r") as f:

        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                sizes[name] = obj.size * obj.dtype.itemsize

        f.visititems(visit)
    return sizes


def _assert_same_state(model, loaded):
    for a, b in zip(model.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(a, b)
    # Optimizer state (iterations, momentum buffers) came back too.
    assert len(model.optimizer.variables) == len(loaded.optimizer.variables)
    for a, b in zip(model.optimizer.variables, loaded.optimizer.variables):
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b)
        )


@pytest.fixture
def _duplicating_wrapper(monkeypatch):
    """ParamGroupOptimizer as it saved before: the inner optimizer's
    variables once as its own and once under `inner_optimizer/`."""
    base = keras.optimizers.Optimizer
    for method in ("save_own_variables", "load_own_variables"):
        monkeypatch.setattr(
            kb.ParamGroupOptimizer, method, getattr(base, method)
        )


FORMATS = ["m.weights.h5", "m.keras"]


@pytest.mark.parametrize("name", FORMATS)
def test_save_load_continues_identically(tmp_path, name):
    x, y = _data()
    model = _fitted_net()
    _save(model, tmp_path / name)
    loaded = _load(tmp_path / name)
    opt = loaded.optimizer
    assert isinstance(opt, kb.ParamGroupOptimizer)
    assert opt.gamma_lr_divisor == 50 and opt.weight_decay == 1e-4
    assert int(keras.ops.convert_to_numpy(opt.iterations)) == STEPS
    _assert_same_state(model, loaded)
    # The next steps are the same, to the last bit.
    for m in (model, loaded):
        m.fit(x, y, batch_size=BATCH, epochs=2, shuffle=False, verbose=0)
    _assert_same_state(model, loaded)


@pytest.mark.parametrize("name", FORMATS)
def test_saved_files_hold_each_optimizer_variable_once(tmp_path, name):
    model = _fitted_net()
    opt = model.optimizer
    _save(model, tmp_path / name)
    sizes = _datasets(tmp_path / name)
    saved = {k: v for k, v in sizes.items() if k.startswith("optimizer/")}
    assert all(k.startswith("optimizer/inner_optimizer/vars/") for k in saved)
    # The state is the inner optimizer's; the hyperparameter variables
    # (divisor, decay, schedule numbers) follow from the config, unsaved.
    state = opt.inner_optimizer.variables
    hyper = opt.variables[len(state) :]
    assert [v.path for v in opt.variables[: len(state)]] == [
        v.path for v in state
    ]
    assert len(hyper) == 3 and all(v.shape == () for v in hyper)
    assert len(saved) == len(state)
    nbytes = [keras.ops.convert_to_numpy(v).nbytes for v in state]
    assert sorted(saved.values()) == sorted(nbytes)
    assert len(sizes) == len(model.weights) + len(state)


@pytest.mark.parametrize("name", FORMATS)
def test_files_with_the_optimizer_state_twice_still_load(
    tmp_path, name, monkeypatch, _duplicating_wrapper
):
    model = _fitted_net()
    old = tmp_path / f"old-{name}"
    _save(model, old)
    monkeypatch.undo()  # the wrapper as it is now
    new = tmp_path / name
    _save(model, new)
    opt = model.optimizer
    twice = _datasets(old)
    assert len(twice) == len(_datasets(new)) + len(opt.variables)
    # Both copies hold the same values; the new file drops one.
    momentum = sum(
        keras.ops.convert_to_numpy(m).nbytes
        for m in opt.inner_optimizer.momentums
    )
    assert os.path.getsize(old) - os.path.getsize(new) >= momentum
    _assert_same_state(model, _load(old))


def test_config_round_trip():
    opt = kb.ParamGroupOptimizer(
        keras.optimizers.Adam(0.003),
        gamma_lr_divisor=10,
        weight_decay=0.0,
        scale_patterns=["rho$"],
        clipnorm=1.0,
        separate_scale_rate=True,
    )
    clone = kb.ParamGroupOptimizer.from_config(opt.get_config())
    assert clone.get_config() == opt.get_config()
    assert clone.separate_scale_rate is True
    assert isinstance(clone.inner_optimizer, keras.optimizers.Adam)
    assert clone.clipnorm == 1.0 and clone.scale_patterns == ["rho$"]


def test_mixed_precision_wraps_and_trains():
    x, y = _data()
    keras.mixed_precision.set_dtype_policy("mixed_float16")
    try:
        model = _conv_bn_net()
        model.compile(
            keras.optimizers.LossScaleOptimizer(
                kb.ParamGroupOptimizer(keras.optimizers.SGD(0.1, momentum=0.9))
            ),
            LOSS,
        )
        history = model.fit(x, y, batch_size=BATCH, epochs=2, verbose=0)
    finally:
        keras.mixed_precision.set_dtype_policy("float32")
    assert np.isfinite(history.history["loss"]).all()
    gamma = model.get_layer("bn1").gamma
    assert gamma.dtype == "float32"
    assert 0 < np.abs(gamma.numpy() - 0.1).max() < 0.01


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_matches_numpy_optimizer(policy):
    """Float32 variables, bfloat16/float16 compute: the wrapper's updates
    equal the NumPy reference on the same (mixed-precision) gradients; in
    float16 through a LossScaleOptimizer, whose scaling is exact."""
    x, y = _data()
    keras.mixed_precision.set_dtype_policy(policy)
    try:
        model, ref = _conv_bn_net(), _conv_bn_net()
        ref.set_weights(model.get_weights())
        opt = kb.ParamGroupOptimizer(
            keras.optimizers.SGD(0.1, momentum=0.9),
            gamma_lr_divisor=100.0,
            weight_decay=1e-4,
        )
        outer, scale = opt, 1.0
        if policy == "mixed_float16":
            scale = 256.0  # float16 gradients are rounded at this scale
            outer = keras.optimizers.LossScaleOptimizer(opt, scale)
        # Eager like the reference: XLA would fuse (and so round) the
        # bfloat16 ops differently, which is no matter of the optimizer.
        model.compile(outer, LOSS, jit_compile=False)
        model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
        _run_reference(ref, x, y, _torch_sgd(0.1, 100.0, 1e-4), scale)
    finally:
        keras.mixed_precision.set_dtype_policy("float32")
    assert model.get_layer("conv1").compute_dtype == policy.split("_")[1]
    assert int(opt.iterations.numpy()) == STEPS  # no step skipped
    for v, r in zip(model.trainable_variables, ref.trainable_variables):
        assert v.dtype == "float32"
        np.testing.assert_allclose(
            v.numpy(), r.numpy(), rtol=1e-4, atol=1e-5, err_msg=v.path
        )
    assert np.abs(model.get_layer("bn1").gamma.numpy() - 0.1).max() > 1e-6


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"gamma_lr_divisor": 0}, "gamma_lr_divisor=0"),
        ({"gamma_lr_divisor": -100}, "gamma_lr_divisor=-100"),
        ({"weight_decay": -1e-4}, "weight_decay=-0.0001"),
        ({"scale_patterns": "("}, "scale_patterns"),
        ({"classify": 3}, "classify"),
        ({"learning_rate": 0.1}, "learning_rate"),
        ({"separate_scale_rate": 1}, "separate_scale_rate=1"),
    ],
)
def test_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        kb.ParamGroupOptimizer(keras.optimizers.SGD(0.1), **kwargs)


@pytest.mark.parametrize(
    "inner, match",
    [
        ("sgd", "Keras optimizer instance"),
        (lambda: keras.optimizers.SGD(0.1, clipnorm=1.0), "clipnorm=1.0"),
        (lambda: keras.optimizers.SGD(0.1, use_ema=True), "use_ema=True"),
        (
            lambda: keras.optimizers.SGD(0.1, gradient_accumulation_steps=2),
            "gradient_accumulation_steps=2",
        ),
    ],
)
def test_rejects_unsupported_inner(inner, match):
    with pytest.raises(ValueError, match=match):
        kb.ParamGroupOptimizer(inner() if callable(inner) else inner)


def test_rejects_built_inner_and_bad_classify_result():
    sgd = keras.optimizers.SGD(0.1)
    sgd.build([keras.Variable(1.0)])
    with pytest.raises(ValueError, match="must not be built"):
        kb.ParamGroupOptimizer(sgd)
    opt = kb.ParamGroupOptimizer(
        keras.optimizers.SGD(0.1), classify=lambda v: "fast"
    )
    with pytest.raises(ValueError, match="'fast'"):
        opt.group_of(keras.Variable(1.0, name="gamma"))


_MIRRORED = textwrap.dedent(
    """
    import json, os
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import numpy as np, keras, keras_bninit as kb

    def make():
        inputs = keras.Input((6, 6, 2))
        x = kb.InputBatchNorm(0.1, synchronized=True)(inputs)
        x = keras.layers.Conv2D(4, 3, use_bias=False)(x)
        x = kb.batch_norm(0.1, synchronized=True)(x)
        x = keras.layers.ReLU()(x)
        x = keras.layers.GlobalAveragePooling2D()(x)
        return keras.Model(inputs, keras.layers.Dense(3)(x))

    def compile_fit(model):
        opt = kb.ParamGroupOptimizer(keras.optimizers.SGD(0.1, momentum=0.9))
        model.compile(opt, keras.losses.SparseCategoricalCrossentropy(
            from_logits=True), jit_compile=False)
        model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
        return opt

    rng = np.random.default_rng(0)
    x = rng.random((64, 6, 6, 2)).astype("float32")
    y = rng.integers(0, 3, 64)
    keras.utils.set_random_seed(0)
    single = make()
    w0 = single.get_weights()
    compile_fit(single)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        mirrored = make()
        mirrored.set_weights(w0)
        opt = compile_fit(mirrored)
    print(json.dumps({
        "replicas": strategy.num_replicas_in_sync,
        "iterations": int(opt.iterations.numpy()),
        "max_diff": max(float(np.abs(a - b).max()) for a, b in
                        zip(single.get_weights(), mirrored.get_weights())),
        "gamma_moved": float(np.abs(mirrored.weights[0].numpy()
                                    - 0.058).max()),
    }))
    """
)


@pytest.mark.skipif(
    BACKEND != "tensorflow", reason="tf.distribute: TensorFlow backend only"
)
def test_mirrored_strategy_matches_single_device():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    out = subprocess.run(
        [sys.executable, "-c", _MIRRORED],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["replicas"] == 2
    assert result["iterations"] == 8
    assert result["max_diff"] < 1e-5
    assert result["gamma_moved"] > 0


def _cosine(lr0, epochs, epoch, eta_min=1e-8):
    return eta_min + (lr0 - eta_min) * (1 + np.cos(np.pi * epoch / epochs)) / 2


@pytest.mark.parametrize("nesterov", [False, True])
def test_torch_sgd_matches_pytorch_form_under_cosine_schedule(nesterov):
    """buf = m buf + g; w -= lr_t buf, with lr_t changing every epoch."""
    rng = np.random.default_rng(3)
    steps_per_epoch, epochs, m = 2, 5, 0.9
    grads = rng.normal(size=(steps_per_epoch * epochs, 4)).astype("float32")
    w0 = rng.normal(size=4).astype("float32")
    schedule = kb.EpochCosineDecay(0.5, steps_per_epoch, epochs)

    def run(optimizer):
        w = keras.Variable(w0, name="w")
        for g in grads:
            optimizer.apply([keras.ops.convert_to_tensor(g)], [w])
        return keras.ops.convert_to_numpy(w).astype("float64")

    w, buf = w0.astype("float64"), np.zeros(4)
    for step, g in enumerate(grads.astype("float64")):
        lr = _cosine(0.5, epochs, step // steps_per_epoch)
        buf = m * buf + g
        w = w - lr * (g + m * buf if nesterov else buf)
    torch_form = run(kb.TorchSGD(schedule, momentum=m, nesterov=nesterov))
    np.testing.assert_allclose(torch_form, w, rtol=1e-5, atol=1e-6)
    if not nesterov:  # Keras's form parts from it once the rate changes
        keras_form = run(keras.optimizers.SGD(schedule, momentum=m))
        assert np.abs(keras_form - w).max() > 1e-2


def test_torch_sgd_in_param_groups_matches_numpy_and_round_trips():
    x, y = _data()
    model, ref = _conv_bn_net(), _conv_bn_net()
    ref.set_weights(model.get_weights())
    schedule = kb.EpochCosineDecay(0.1, 1, STEPS)  # a new rate every step
    opt = kb.ParamGroupOptimizer(
        kb.TorchSGD(schedule, momentum=0.9), gamma_lr_divisor=100.0
    )
    model.compile(opt, LOSS, jit_compile=False)
    model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)

    variables = ref.trainable_variables
    groups = [_reference_group(v) for v in variables]
    buffers = [np.zeros(v.shape) for v in variables]
    for s in range(STEPS):
        xb, yb = x[s * BATCH : (s + 1) * BATCH], y[s * BATCH : (s + 1) * BATCH]
        grads = _grads(ref, xb, yb)
        lr = _cosine(0.1, STEPS, s)
        for i, (v, g) in enumerate(zip(variables, grads)):
            w = v.numpy().astype("float64")
            g = g + (1e-4 * w if groups[i] == "decay" else 0.0)
            buffers[i] = 0.9 * buffers[i] + g
            rate = lr / 100.0 if groups[i] == "scale" else lr
            v.assign((w - rate * buffers[i]).astype("float32"))
    for v, r in zip(model.trainable_variables, ref.trainable_variables):
        np.testing.assert_allclose(
            v.numpy(), r.numpy(), rtol=2e-5, atol=1e-6, err_msg=v.path
        )
    config = keras.optimizers.serialize(opt)
    clone = keras.optimizers.deserialize(config)
    assert type(clone.inner_optimizer) is kb.TorchSGD
    assert clone.inner_optimizer.momentum == 0.9


def test_param_group_optimizer_is_not_wrapped_twice():
    inner = kb.ParamGroupOptimizer(keras.optimizers.SGD(0.1))
    with pytest.raises(
        ValueError, match="already a ParamGroupOptimizer; wrap the inner"
    ):
        kb.ParamGroupOptimizer(inner)


# ------------------------------------------------------------------------
# The wrapper's API: inner_optimizer (optimizer= deprecated), iterations,
# weight_decay, the group order, configs written with the former key.
# ------------------------------------------------------------------------


def _unit_variables():
    """A kernel (decayed) and a gamma (a scale) of ones."""
    return (
        keras.Variable(np.ones((2, 3), "float32"), name="kernel"),
        keras.Variable(np.ones(3, "float32"), name="gamma"),
    )


def _step(opt, variables, grad=0.5):
    opt.apply([np.full(v.shape, grad, "float32") for v in variables], variables)


def test_inner_optimizer_keyword():
    inner = keras.optimizers.SGD(0.1)
    opt = kb.ParamGroupOptimizer(inner_optimizer=inner, weight_decay=0.0)
    assert opt.inner_optimizer is inner
    kernel, gamma = _unit_variables()
    _step(opt, [kernel, gamma])
    np.testing.assert_allclose(kernel.numpy(), 1 - 0.1 * 0.5, rtol=1e-6)
    np.testing.assert_allclose(gamma.numpy(), 1 - 0.1 / 100 * 0.5, rtol=1e-6)


def test_former_optimizer_keyword_warns_once_per_process(monkeypatch):
    monkeypatch.setattr(kb.optimizers, "_WARNED", set())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = kb.ParamGroupOptimizer(optimizer=keras.optimizers.SGD(0.1))
        kb.ParamGroupOptimizer(optimizer=keras.optimizers.Adam(0.1))
        kb.ParamGroupOptimizer(inner_optimizer=keras.optimizers.SGD(0.1))
    (warning,) = [w for w in caught if w.category is DeprecationWarning]
    assert "use inner_optimizer=" in str(warning.message)
    assert warning.filename == __file__  # points at the caller
    assert isinstance(first.inner_optimizer, keras.optimizers.SGD)


def test_inner_optimizer_given_twice_is_rejected():
    with pytest.raises(ValueError, match="`inner_optimizer`.*Received both"):
        kb.ParamGroupOptimizer(
            keras.optimizers.SGD(0.1), optimizer=keras.optimizers.SGD(0.2)
        )


def test_iterations_are_the_inner_optimizers():
    inner = keras.optimizers.SGD(0.1)
    opt = kb.ParamGroupOptimizer(inner)
    assert opt.iterations is inner.iterations
    variables = _unit_variables()
    for _ in range(3):
        _step(opt, variables)
    assert int(opt.iterations.numpy()) == int(inner.iterations.numpy()) == 3


def test_weight_decay_is_set_before_build_and_refused_after():
    opt = kb.ParamGroupOptimizer(keras.optimizers.SGD(0.1), weight_decay=1e-4)
    opt.weight_decay = 0.05
    assert opt.weight_decay == 0.05 and opt.get_config()["weight_decay"] == 0.05
    with pytest.raises(ValueError, match="Received: weight_decay=-1"):
        opt.weight_decay = -1
    kernel, gamma = _unit_variables()
    _step(opt, [kernel, gamma])
    # Coupled L2 with the new coefficient: w - lr * (g + wd * w), on the
    # kernel only (1 - 0.1 * 0.55; 1e-4 would leave 0.94999).
    np.testing.assert_allclose(kernel.numpy(), 0.945, rtol=1e-6)
    np.testing.assert_allclose(gamma.numpy(), 1 - 0.1 / 100 * 0.5, rtol=1e-6)
    with pytest.raises(
        ValueError, match=r"before the optimizer is built.*weight_decay=0\.2"
    ):
        opt.weight_decay = 0.2
    assert opt.weight_decay == 0.05


@pytest.mark.parametrize("per_group_floor", [False, True])
def test_base_with_the_scales_rate_computed_is_base_bit_for_bit(
    per_group_floor,
):
    """A sweep's shared program computes the scales' rate from variables
    even for BASE (`separate_scale_rate`): built with a = 100 and moved to
    a = 1, it trains BASE to the very numbers of BASE without that rate,
    where the floored schedule's offset is not 0 (eta_min = 1e-3)."""
    x, y = _data()
    trained = []
    for separate in (False, True):
        model = _conv_bn_net(gamma=1.0)
        schedule = kb.EpochCosineDecay(
            0.1, STEPS, 3, eta_min=1e-3, per_group_floor=per_group_floor
        )
        opt = kb.ParamGroupOptimizer(
            kb.TorchSGD(schedule, momentum=0.9),
            gamma_lr_divisor=100.0 if separate else 1.0,
            separate_scale_rate=separate,
        )
        opt.build(model.trainable_variables)
        if separate:
            opt.set_hyperparameters(gamma_lr_divisor=1.0)
        else:  # a = 1 is structure here: no own rate to move to
            with pytest.raises(ValueError, match="separate_scale_rate=True"):
                opt.set_hyperparameters(gamma_lr_divisor=100.0)
        model.compile(opt, LOSS)
        model.fit(x, y, batch_size=BATCH, epochs=3, shuffle=False, verbose=0)
        trained.append(model.get_weights())
        gamma = keras.ops.convert_to_numpy(model.get_layer("bn1").gamma)
        assert np.all(gamma != 1.0)  # the scales trained, at lr(t)
    assert len(trained[0]) == len(trained[1])
    for base, separate in zip(*trained):
        np.testing.assert_array_equal(base, separate)


def test_group_order_is_tag_classify_patterns_rule():
    tagged = kb.tag_variable(keras.Variable(np.ones(2), name="kernel"), "scale")
    gamma = keras.Variable(np.ones(2), name="gamma")
    beta = keras.Variable(np.ones(2), name="beta")
    bias = keras.Variable(np.ones(2), name="bias")
    opt = kb.ParamGroupOptimizer(
        keras.optimizers.SGD(0.1),
        # Each rule says otherwise for the variables an earlier rule decides.
        classify=lambda v: {"kernel": "no_decay", "gamma": "decay"}.get(v.name),
        no_decay_patterns=["kernel", "gamma"],
        decay_patterns="beta",
    )
    groups = [opt.group_of(v) for v in (tagged, gamma, beta, bias)]
    assert groups == ["scale", "decay", "decay", "no_decay"]
    lines = opt.describe([tagged, gamma, beta, bias]).splitlines()
    assert lines[0] == (
        "group order: tag > classify > patterns > default rule "
        "(ParamGroupOptimizer.group_of)"
    )
    assert [line.split()[2] for line in lines[2:6]] == groups


def _old_style(config):
    """A ParamGroupOptimizer config as 0.2 wrote it: `optimizer`, not
    `inner_optimizer`."""
    config = dict(config)
    config["optimizer"] = config.pop("inner_optimizer")
    return config


def test_config_with_the_former_optimizer_key_loads():
    config = {
        "name": "param_group_optimizer",
        "optimizer": keras.saving.serialize_keras_object(
            keras.optimizers.SGD(0.05, momentum=0.9)
        ),
        "gamma_lr_divisor": 10.0,
        "weight_decay": 5e-4,
    }
    opt = kb.ParamGroupOptimizer.from_config(config)
    assert isinstance(opt.inner_optimizer, keras.optimizers.SGD)
    assert opt.inner_optimizer.momentum == 0.9
    assert float(opt.learning_rate) == pytest.approx(0.05)
    assert (opt.gamma_lr_divisor, opt.weight_decay) == (10.0, 5e-4)
    assert "optimizer" not in opt.get_config()


def test_keras_file_with_the_former_optimizer_key_loads(tmp_path):
    model = _fitted_net()
    model.save(tmp_path / "new.keras")
    old = tmp_path / "old.keras"
    with zipfile.ZipFile(tmp_path / "new.keras") as new_file:
        with zipfile.ZipFile(old, "w") as old_file:
            for item in new_file.infolist():
                data = new_file.read(item)
                if item.filename == "config.json":
                    config = json.loads(data)
                    optimizer = config["compile_config"]["optimizer"]
                    optimizer["config"] = _old_style(optimizer["config"])
                    data = json.dumps(config)
                old_file.writestr(item, data)
    loaded = keras.models.load_model(old)
    assert loaded.optimizer.gamma_lr_divisor == 50
    assert int(loaded.optimizer.iterations.numpy()) == STEPS
    _assert_same_state(model, loaded)


# ------------------------------------------------------------------------
# The reference's forms in float64: PyTorch's SGD, CosineAnnealingLR per
# parameter group and BN running statistics (Sections 3.1, 3.2, 4.2).
# ------------------------------------------------------------------------


# Keras runs float64 end to end on TensorFlow only: its type promotion maps
# float64 to float32 on JAX and PyTorch (keras.backend.result_type), so
# BN's statistics (and on PyTorch matmul, on JAX cos) are float32 there,
# about 1e-7 per step.
_FLOAT64 = (
    {"rtol": 1e-6, "atol": 1e-9}
    if BACKEND == "tensorflow"
    else {"rtol": 1e-5, "atol": 1e-8}
)


def test_param_groups_match_pytorch_in_float64(float64):
    """100 steps, the rate changing 4 times, against the NumPy reference."""
    lr0, eta_min, divisor, wd = 0.1, 2e-4, 100.0, 1e-4
    steps_per_epoch, epochs, batch = 20, 5, 8
    rng = np.random.default_rng(7)
    x = rng.normal(size=(100 * batch, 3)) * [1.0, 2.0, 0.5] + [0.5, -1, 2]
    y = rng.normal(size=(100 * batch, 2))

    bn = kb.batch_norm(0.1, moving_variance="unbiased", name="bn")
    model, names = dense_bn_dense(bn)
    assert all(v.dtype == "float64" for v in model.weights)
    initial = {k: keras.ops.convert_to_numpy(v) for k, v in names.items()}
    schedule = kb.EpochCosineDecay(
        lr0, steps_per_epoch, epochs, eta_min=eta_min, per_group_floor=True
    )
    opt = kb.ParamGroupOptimizer(
        kb.TorchSGD(schedule, momentum=0.9),
        gamma_lr_divisor=divisor,
        weight_decay=wd,
    )
    model.compile(opt, "mse")
    model.fit(x, y, batch_size=batch, epochs=1, shuffle=False, verbose=0)
    assert int(keras.ops.convert_to_numpy(opt.iterations)) == 100

    def pytorch_rates(name, step):
        base = lr0 / divisor if name == "gamma" else lr0
        return _per_group_cosine(base, eta_min, epochs, step // steps_per_epoch)

    batches = [
        (x[i : i + batch], y[i : i + batch]) for i in range(0, len(x), batch)
    ]
    expected, mean, var = _pytorch_dense_bn_dense(
        initial, batches, pytorch_rates, wd
    )
    for name, variable in names.items():
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(variable),
            expected[name],
            err_msg=name,
            **_FLOAT64,
        )
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(bn.moving_mean), mean, **_FLOAT64
    )
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(bn.moving_variance), var, **_FLOAT64
    )

    # Not vacuous: the scales' divided floor gives other scales.
    def divided(name, step):
        rate = _per_group_cosine(lr0, eta_min, epochs, step // steps_per_epoch)
        return rate / divisor if name == "gamma" else rate

    other, _, _ = _pytorch_dense_bn_dense(initial, batches, divided, wd)
    gamma = keras.ops.convert_to_numpy(bn.gamma)
    assert (
        np.abs(other["gamma"] - gamma).max()
        > 1e3 * np.abs(expected["gamma"] - gamma).max()
    )


def test_schedule_in_float64_and_group_rates(float64):
    lr0, eta_min, epochs = 0.1, 1e-8, 7
    for per_group_floor in (False, True):
        schedule = kb.EpochCosineDecay(
            lr0, 3, epochs, eta_min=eta_min, per_group_floor=per_group_floor
        )
        for step in range(0, 3 * epochs + 1, 2):
            rate = schedule(step)
            assert keras.backend.standardize_dtype(rate.dtype) == "float64"
            cosine = _per_group_cosine(lr0, eta_min, epochs, step // 3)
            np.testing.assert_allclose(
                keras.ops.convert_to_numpy(rate),
                cosine,
                rtol=1e-6 if BACKEND == "jax" else 1e-14,  # ops.cos: float32
            )
            group = schedule.group_learning_rate(rate, 0.01)
            assert keras.backend.standardize_dtype(group.dtype) == "float64"
            expected = (
                _per_group_cosine(lr0 * 0.01, eta_min, epochs, step // 3)
                if per_group_floor
                else 0.01 * cosine
            )
            np.testing.assert_allclose(
                keras.ops.convert_to_numpy(group),
                expected,
                rtol=1e-6 if BACKEND == "jax" else 1e-12,
            )
    # The last epoch of the paper's run: the floors differ by a lot.
    schedule = kb.EpochCosineDecay(0.001, 1, 180, per_group_floor=True)
    last = schedule(179)
    per_group = float(schedule.group_learning_rate(last, 0.01))
    assert per_group / (0.01 * float(last)) > 1.5


def test_schedule_float32_numbers_are_unchanged():
    """In float32, __call__ and the divided group rate are the numbers the
    schedule and ParamGroupOptimizer gave before (hard-coded float32)."""
    ops = keras.ops
    assert keras.config.floatx() == "float32"
    schedule = kb.EpochCosineDecay(0.1, 7, 180)
    for step in [0, 1, 6, 7, 100, 637, 1259, 1260, 5000]:
        epoch = ops.floor_divide(ops.cast(step, "float32"), 7.0)
        old = 1e-8 + (0.1 - 1e-8) * (0.5 * (1.0 + ops.cos(np.pi * epoch / 180)))
        rate = schedule(step)
        assert keras.backend.standardize_dtype(rate.dtype) == "float32"
        np.testing.assert_array_equal(
            ops.convert_to_numpy(rate), ops.convert_to_numpy(old)
        )
        old_group = ops.multiply(
            ops.cast(old, "float32"), ops.cast(0.01, "float32")
        )
        np.testing.assert_array_equal(
            ops.convert_to_numpy(schedule.group_learning_rate(rate, 0.01)),
            ops.convert_to_numpy(old_group),
        )


def test_schedule_config_and_bad_per_group_floor():
    schedule = kb.EpochCosineDecay(0.1, 5, 10, per_group_floor=True)
    config = schedule.get_config()
    assert config["per_group_floor"] is True
    clone = kb.EpochCosineDecay.from_config(config)
    assert clone.get_config() == config
    assert kb.EpochCosineDecay(0.1, 5, 10).per_group_floor is False
    with pytest.raises(ValueError, match="Received: per_group_floor=1"):
        kb.EpochCosineDecay(0.1, 5, 10, per_group_floor=1)
    with pytest.raises(ValueError, match="eta_min != initial_learning_rate"):
        kb.EpochCosineDecay(0.1, 5, 10, eta_min=0.1, per_group_floor=True)
    kb.EpochCosineDecay(0.1, 5, 10, eta_min=0.1)  # constant, divided: fine
    with pytest.raises(ValueError, match="Received: factor=0"):
        schedule.group_learning_rate(0.1, 0)
