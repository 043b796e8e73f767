"""Diagnostics callbacks and plots (keras_bninit.harness.diagnostics)."""

import importlib.util
import json
import os

import keras
import numpy as np
import pytest

import keras_bninit
from keras_bninit import InputBatchNorm, batch_norm
from keras_bninit.harness import diagnostic_plots
from keras_bninit.harness import diagnostics as diag


def fan_in():
    """Kaiming normal (fan-in, ReLU gain). A new instance per layer: an
    initializer object made once keeps its own random stream, which
    `set_random_seed` does not reset, so a shared one would make the weights
    depend on what ran before in the process."""
    return keras.initializers.VarianceScaling(
        2.0, mode="fan_in", distribution="untruncated_normal"
    )


def conv_stack(gamma=1.0, depth=3, width=8, input_shape=(8, 8, 1), seed=0):
    """Input BN, then `depth` x (conv 3x3 -> BN(gamma) -> ReLU), GAP, dense."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input(input_shape)
    h = InputBatchNorm(gamma=gamma, name="input_bn")(inputs)
    for i in range(depth):
        h = keras.layers.Conv2D(
            width,
            3,
            padding="same",
            use_bias=False,
            kernel_initializer=fan_in(),
            name=f"conv{i}",
        )(h)
        h = batch_norm(gamma=gamma, name=f"bn{i}")(h)
        h = keras.layers.ReLU()(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    outputs = keras.layers.Dense(3)(h)
    return keras.Model(inputs, outputs)


def toy_data(n=64, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.random((n, 8, 8, 1), dtype=np.float32)
    y = rng.integers(0, 3, size=n)
    return x, y


def rows_of(run_dir, name):
    return diagnostic_plots.read_jsonl(os.path.join(run_dir, name))


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A tiny model trained 2 epochs with all three callbacks."""
    run_dir = str(tmp_path_factory.mktemp("run"))
    model = conv_stack(gamma=0.5)
    model.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    x, y = toy_data()
    callbacks = diag.diagnostic_callbacks(run_dir, (x, y), max_examples=32)
    model.fit(x, y, batch_size=16, epochs=2, verbose=0, callbacks=callbacks)
    return run_dir, model, x[:32]


LAYERS = ["input_bn", "bn0", "bn1", "bn2"]
# Fields of every record, and of a summary over channels.
RECORD = {"epoch", "step", "layer"}
SUMMARY = {"mean", "std", "min", "max"}


def test_bn_params_file_fields_and_values(trained_run):
    run_dir, model, _ = trained_run
    rows = rows_of(run_dir, diag.BN_PARAMS_FILE)
    fields = RECORD | {"weight", "channels", "drift", "max_drift"} | SUMMARY
    assert all(set(row) == fields for row in rows)
    assert sorted({row["epoch"] for row in rows}) == [0, 1, 2]
    # InputBatchNorm has no beta; the stock BNs have gamma and beta.
    keys = {(row["layer"], row["weight"]) for row in rows}
    assert keys == {("input_bn", "gamma")} | {
        (f"bn{i}", w) for i in range(3) for w in ("gamma", "beta")
    }
    init = [row for row in rows if row["epoch"] == 0]
    assert all(row["drift"] == 0 for row in init)
    for row in init:
        if row["layer"] != "input_bn":
            assert row["mean"] == pytest.approx(
                0.5 if row["weight"] == "gamma" else 0.0
            )
    end = {(r["layer"], r["weight"]): r for r in rows if r["epoch"] == 2}
    for name in ("bn0", "bn2"):
        layer = model.get_layer(name)
        gamma = keras.ops.convert_to_numpy(layer.gamma).astype(np.float64)
        row = end[(name, "gamma")]
        assert row["step"] == 8  # 2 epochs x 4 batches
        assert row["mean"] == pytest.approx(gamma.mean())
        assert row["std"] == pytest.approx(gamma.std())
        assert row["min"] == pytest.approx(gamma.min())
        assert row["max"] == pytest.approx(gamma.max())
        assert row["drift"] == pytest.approx(np.abs(gamma - 0.5).mean())
        assert row["drift"] > 0


def test_bn_vectors_file(trained_run):
    run_dir, model, _ = trained_run
    with open(os.path.join(run_dir, diag.BN_VECTORS_FILE)) as f:
        vectors = json.load(f)
    assert vectors["end_epoch"] == 2
    assert list(vectors["init"]) == LAYERS
    np.testing.assert_allclose(vectors["init"]["bn1"]["gamma"], 0.5)
    np.testing.assert_allclose(
        vectors["end"]["bn1"]["beta"],
        keras.ops.convert_to_numpy(model.get_layer("bn1").beta),
        rtol=1e-6,
    )


def test_probe_monitors_files(trained_run):
    run_dir, model, probe = trained_run
    large = rows_of(run_dir, diag.LARGE_VALUES_FILE)
    assert set(large[0]) == RECORD | {"n", "max_abs"} | {
        "frac_above_3",
        "frac_above_6",
    }
    assert [r["layer"] for r in large if r["epoch"] == 0] == LAYERS
    assert large[0]["n"] == 32 * 8 * 8  # probe x positions x 1 channel
    assert all(0 <= r["frac_above_6"] <= r["frac_above_3"] <= 1 for r in large)

    factors = rows_of(run_dir, diag.GRAD_FACTORS_FILE)
    assert set(factors[0]) == RECORD | {"channels"} | SUMMARY
    assert sorted({r["epoch"] for r in factors}) == [0, 1, 2]
    # The last record matches a direct computation on the trained model.
    direct = diag.gradient_factors(model, probe)
    for row in factors[-len(LAYERS) :]:
        assert row["mean"] == pytest.approx(direct[row["layer"]].mean())
        assert row["max"] == pytest.approx(direct[row["layer"]].max())


def test_plot_run_writes_pngs(trained_run, tmp_path):
    run_dir, _, _ = trained_run
    paths = diagnostic_plots.plot_run(run_dir, out_dir=tmp_path)
    names = sorted(os.path.basename(p) for p in paths)
    assert names == [
        "bn_drift.png",
        "bn_params_init_vs_end.png",
        "grad_factors.png",
        "large_values.png",
    ]
    for path in paths:
        with open(path, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_probe_leaves_model_unchanged():
    model = conv_stack()
    x, _ = toy_data(16)
    before = [keras.ops.convert_to_numpy(v) for v in model.weights]
    outputs = keras.ops.convert_to_numpy(model(x, training=False))
    diag.probe_statistics(model, x)
    after = [keras.ops.convert_to_numpy(v) for v in model.weights]
    for a, b in zip(before, after, strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(
        outputs, keras.ops.convert_to_numpy(model(x, training=False))
    )
    assert all("call" not in layer.__dict__ for layer in model.layers)


@pytest.mark.parametrize("k", [0, 1, 4])
def test_large_values_known_fraction(k, tmp_path):
    # Per channel: m - 2k values of +-1 and k pairs +-50, so the batch mean
    # is 0, var_B = (m - 2k + 2k * 2500) / m, and exactly 2k values have
    # |x_hat| > 6 while the others are below 1.
    m = 1000
    rng = np.random.default_rng(k)
    column = np.array([1.0, -1.0] * ((m - 2 * k) // 2) + [50.0, -50.0] * k)
    # Channel 1 has no outliers: the layer's fraction is 2k / (2m).
    x = np.stack([rng.permutation(column), np.tile([1.0, -1.0], m // 2)], 1)
    x = x.astype(np.float32)
    model = keras.Sequential([keras.Input((2,)), batch_norm(name="bn")])
    var = (m - 2 * k + 2 * k * 2500.0) / m
    expected_max = 50 / np.sqrt(var + 1e-5) if k else 1 / np.sqrt(1 + 1e-5)
    result = diag.large_values(model, x)["bn"]
    assert result["n"] == 2 * m
    assert result["frac_above"][3.0] == 2 * k / (2 * m)
    assert result["frac_above"][6.0] == 2 * k / (2 * m)
    assert result["max_abs"] == pytest.approx(expected_max, rel=1e-5)
    # The callback (compiled pass) records the same.
    monitor = diag.LargeValueMonitor(x, tmp_path, max_examples=m)
    monitor.set_model(model)
    monitor.on_train_begin()
    (row,) = rows_of(tmp_path, diag.LARGE_VALUES_FILE)
    assert row["frac_above_3"] == row["frac_above_6"] == 2 * k / (2 * m)
    assert row["max_abs"] == pytest.approx(expected_max, rel=1e-5)


def test_gradient_factors_cancel_at_init():
    # Section 3.3: with gamma_0 = c for every BN and fan-in kernels,
    # var_B of an interior BN's input scales as c^2, so the factor
    # c / sqrt(var_B + eps) does not depend on c and is about equal across
    # interior layers.
    x = np.random.default_rng(0).normal(size=(32, 8, 8, 3))
    means = {}
    for c in (1.0, 0.1):
        model = conv_stack(c, depth=5, width=64, input_shape=(8, 8, 3))
        factors = diag.gradient_factors(model, x.astype(np.float32))
        means[c] = np.array([factors[f"bn{i}"].mean() for i in range(1, 5)])
    np.testing.assert_allclose(means[0.1], means[1.0], rtol=0.01)
    interior = means[1.0]
    assert interior.max() / interior.min() < 1.04
    # Each is close to 1 / sqrt(2 sigma_act^2) = 1.211: the fan-in gain 2
    # times the variance of a ReLU of a unit Gaussian (Section 3.3);
    # correlations between neighboring positions move it a little.
    sigma_act = keras_bninit.activation_std("relu")
    np.testing.assert_allclose(interior, 1 / np.sqrt(2 * sigma_act**2), 0.05)


class ScaledBatchNorm(keras.layers.BatchNormalization):
    """An A2-like variant: an extra per-channel weight `rho`."""

    def build(self, input_shape):
        super().build(input_shape)
        self.rho = self.add_weight(
            name="rho", shape=(input_shape[-1],), initializer="ones"
        )

    def call(self, inputs, training=None, mask=None):
        return self.rho * super().call(inputs, training=training, mask=mask)


class SubclassedNet(keras.Model):
    def __init__(self):
        super().__init__()
        self.conv = keras.layers.Conv2D(4, 3)
        self.bn = ScaledBatchNorm(name="scaled")
        self.block = keras.Sequential(
            [keras.layers.Conv2D(4, 1), batch_norm(name="bn")], name="block"
        )

    def call(self, x, training=None):
        return self.block(self.bn(self.conv(x), training=training))


def test_subclassed_nested_and_extra_weights(tmp_path):
    model = SubclassedNet()
    x, y = toy_data(16)
    model(x)
    names = [name for name, _ in diag.find_batch_norms(model)]
    assert names == ["scaled", "block/bn"]
    assert list(diag.per_channel_weights(model.bn)) == ["gamma", "beta", "rho"]
    model.compile(optimizer="sgd", loss="mse")
    callbacks = diag.diagnostic_callbacks(tmp_path, x)
    y = np.zeros((16, 6, 6, 4))
    model.fit(x, y, epochs=1, verbose=0, callbacks=callbacks)
    rows = rows_of(tmp_path, diag.BN_PARAMS_FILE)
    assert ("scaled", "rho") in {(r["layer"], r["weight"]) for r in rows}
    factors = rows_of(tmp_path, diag.GRAD_FACTORS_FILE)
    assert {r["layer"] for r in factors} == {"scaled", "block/bn"}


def test_every_n_epochs_and_last_epoch(tmp_path):
    model = conv_stack(depth=1)
    model.compile(optimizer="sgd", loss="mse")
    x, _ = toy_data(16)
    tracker = diag.BNParameterTracker(tmp_path, every=2)
    model.fit(x, np.zeros((16, 3)), epochs=3, verbose=0, callbacks=[tracker])
    epochs = sorted({r["epoch"] for r in rows_of(tmp_path, "bn_params.jsonl")})
    assert epochs == [0, 2, 3]


HAS_TENSORBOARD = importlib.util.find_spec("tensorboard") is not None


@pytest.mark.skipif(not HAS_TENSORBOARD, reason="tensorboard not installed")
def test_tensorboard_output(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import (
        EventAccumulator,
    )

    model = conv_stack(depth=1)
    model.compile(optimizer="sgd", loss="mse")
    x, _ = toy_data(16)
    callbacks = diag.diagnostic_callbacks(tmp_path, x, tensorboard=True)
    model.fit(x, np.zeros((16, 3)), epochs=1, verbose=0, callbacks=callbacks)
    events = EventAccumulator(str(tmp_path / "tensorboard")).Reload()
    tags = events.Tags()
    assert any(t.startswith("bn/") for t in tags["tensors"] + tags["scalars"])


def test_tensorboard_missing_raises_at_construction(tmp_path, monkeypatch):
    monkeypatch.setattr(diag, "_has_tensorboard", lambda: False)
    with pytest.raises(ValueError, match="tensorboard"):
        diag.diagnostic_callbacks(tmp_path, np.zeros((2, 2)), tensorboard=True)


@pytest.mark.parametrize(
    "make",
    [
        lambda d: diag.BNParameterTracker(d, every=0),
        lambda d: diag.LargeValueMonitor(np.zeros((2, 2)), d, thresholds=[-1]),
        lambda d: diag.GradientFactorMonitor(None, d),
    ],
)
def test_bad_arguments_raise_at_construction(make, tmp_path):
    with pytest.raises(ValueError, match="Received"):
        make(tmp_path)


def test_attached_after_training_is_labelled_at_attach(tmp_path):
    """Callbacks attached to a model trained before record its state then,
    labelled "at attach (after N steps)", not "initialization"."""
    model = conv_stack(gamma=0.1)
    model.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    x, y = toy_data()
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)  # 4 steps
    trained = keras.ops.convert_to_numpy(model.get_layer("bn1").gamma)
    run_dir = str(tmp_path / "run")
    callbacks = diag.diagnostic_callbacks(run_dir, (x, y), max_examples=32)
    model.fit(x, y, batch_size=16, epochs=1, verbose=0, callbacks=callbacks)
    with open(os.path.join(run_dir, diag.BN_VECTORS_FILE)) as f:
        vectors = json.load(f)
    assert vectors["init_step"] == 4
    np.testing.assert_allclose(vectors["init"]["bn1"]["gamma"], trained)
    assert not np.allclose(trained, 0.1)  # not the initialization
    rows = rows_of(run_dir, diag.BN_PARAMS_FILE)
    assert {r["step"] for r in rows if r["epoch"] == 0} == {4}
    label = "at attach (after 4 steps)"
    assert diagnostic_plots._start_label(4) == label
    assert diagnostic_plots._start_label(0) == "initialization"
    figure = diagnostic_plots._plot_init_vs_end(vectors)
    legend = [t.get_text() for t in figure.axes[0].get_legend().get_texts()]
    assert label in legend and "initialization" not in legend
    figure = diagnostic_plots._plot_drift(rows)
    assert figure.axes[0].get_title() == f"gamma drift from {label}"
