"""One run end to end on the offline digits data."""

import json
import math
import os

import keras
import numpy as np
import pytest

from keras_bninit.harness.experiment import (
    RunConfig,
    apply_ablation,
    run_experiment,
    validate,
)
from tests._tiny import Crash, CrashAt, tiny_builder


def _config(tmp_path, **kwargs):
    values = {
        "dataset": "digits",
        "model": "tiny",
        "epochs": 3,
        "out": str(tmp_path),
        "verbose": 0,
        "seed": 2,
    }
    return RunConfig(**{**values, **kwargs})


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    record = run_experiment(_config(out), build_model=tiny_builder)
    return record


def test_record_and_files(finished):
    record = finished
    assert record["status"] == "ok" and record["reason"] is None
    assert set(os.listdir(record["run_dir"])) == {
        "config.json",
        "epochs.json",
        "result.json",
        "model.keras",
    }
    with open(os.path.join(record["run_dir"], "result.json")) as f:
        assert json.load(f) == json.loads(json.dumps(record))
    history = record["history"]
    assert len(history["val_accuracy"]) == 3
    # The best epoch is the first epoch with the highest val accuracy.
    best = int(np.argmax(history["val_accuracy"]))
    assert record["best_epoch"] == best + 1
    assert record["val_accuracy"] == history["val_accuracy"][best]
    assert record["complex_seed"] == 0xCC14862C  # md5("2") ends in cc14862c
    assert record["config"]["batch_size"] == 64
    assert record["config"]["lr"] == 0.1
    assert record["data"]["num_train"] == 1293
    assert record["images_per_s"] > 0 and record["wall_time_s"] > 0
    assert set(record["versions"]) >= {"tensorflow", "keras", "keras_bninit"}


def test_cosine_schedule_per_epoch(finished):
    # lr(epoch) = eta_min + (lr0 - eta_min) (1 + cos(pi e / T)) / 2: the
    # rate each epoch trained with (0.1, 0.075, 0.025), not the next one's.
    lrs = finished["history"]["lr"]
    expected = [
        1e-8 + (0.1 - 1e-8) * (1 + math.cos(math.pi * e / 3)) / 2
        for e in range(3)
    ]
    np.testing.assert_allclose(lrs, expected, rtol=1e-5, atol=1e-9)


def test_saved_model_is_the_best_epoch(finished):
    from keras_bninit.harness.data import load_dataset

    model = keras.models.load_model(
        os.path.join(finished["run_dir"], "model.keras")
    )
    splits = load_dataset("digits")
    test = model.evaluate(splits.test_dataset(), verbose=0, return_dict=True)
    assert test["accuracy"] == pytest.approx(finished["test_accuracy"])
    val = model.evaluate(splits.val_dataset(), verbose=0, return_dict=True)
    assert val["accuracy"] == pytest.approx(finished["val_accuracy"])


def test_completed_run_is_not_trained_again(finished):
    config = RunConfig(**finished["config"])
    again = run_experiment(
        config, build_model=lambda *a, **k: pytest.fail("trained again")
    )
    assert again == finished


def test_interrupted_run_resumes_where_it_stopped(tmp_path):
    config = _config(tmp_path, epochs=4)
    with pytest.raises(Crash):
        run_experiment(config, build_model=tiny_builder, callbacks=[CrashAt(2)])
    run_dir = tmp_path / config.resolved().run_name()
    with open(run_dir / "epochs.json") as f:
        assert [e["epoch"] for e in json.load(f)] == [0, 1]
    assert not (run_dir / "result.json").exists()

    started = []

    class _Record(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            started.append(epoch)

    record = run_experiment(
        config, build_model=tiny_builder, callbacks=[_Record()]
    )
    assert started == [2, 3]  # the two finished epochs were not redone
    assert record["status"] == "ok"
    assert len(record["history"]["val_accuracy"]) == 4
    assert not (run_dir / "backup").exists()
    assert not list(run_dir.glob("best-e*.weights.h5"))


def test_diverging_run_is_recorded_as_failed(tmp_path):
    config = _config(tmp_path, lr=1e30, gamma=1.0, gamma_lr_divisor=1.0)
    record = run_experiment(config, build_model=tiny_builder)
    assert record["status"] == "failed"
    assert "non-finite" in record["reason"]
    assert record["test_accuracy"] is None
    run_dir = record["run_dir"]
    assert not os.path.exists(os.path.join(run_dir, "model.keras"))
    assert run_experiment(config, build_model=tiny_builder) == record


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"dataset": "cifar11"}, "Unknown data set 'cifar11'.*digits"),
        ({"gamma": 0}, "gamma=0"),
        ({"gamma_lr_divisor": -1}, "gamma_lr_divisor=-1"),
        ({"lr": 0}, "lr=0"),
        ({"epochs": 0}, "epochs=0"),
        ({"batch_size": 0}, "batch_size=0"),
        ({"seed": -3}, "seed=-3"),
        ({"seed": 1.5}, "seed=1.5"),
        ({"seed": 2**31}, r"`seed` must be < 2\*\*31 \(2147483648\)"),
        ({"gamma": 1e39}, "representable in float32.*gamma=1e"),
        ({"lr": 1e-50}, "representable in float32.*lr=1e-50"),
        ({"activation_std": -1.0}, "activation_std=-1.0"),
        ({"activation_std": "cube"}, "one of .*relu"),
        ({"bn": "xbn"}, "standard, a1, a2.*bn='xbn'"),
        ({"input_norm": "z"}, "bn, fixed, offline, none.*input_norm='z'"),
    ],
)
def test_bad_configuration(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        validate(_config(tmp_path, **kwargs))
    assert os.listdir(tmp_path) == []


def test_output_path_that_is_a_file(tmp_path):
    path = tmp_path / "file"
    path.write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        run_experiment(
            _config(tmp_path, out=str(path)), build_model=tiny_builder
        )


def test_unknown_model_and_fields(tmp_path):
    with pytest.raises(ValueError, match="Unknown model 'nope'.*resnet8"):
        run_experiment(_config(tmp_path, model="nope"))
    with pytest.raises(ValueError, match="gama"):
        RunConfig.from_dict({"gama": 0.1})


def test_baseline_and_ablations():
    base = RunConfig.baseline(gamma=0.1, bn="a1")
    assert (base.gamma, base.gamma_lr_divisor, base.bn) == (
        1.0,
        1.0,
        "standard",
    )
    config = RunConfig(gamma=0.1, gamma_lr_divisor=100)
    init = apply_ablation(config, "init-only")
    assert (init.gamma, init.gamma_lr_divisor) == (0.1, 1.0)
    lr_only = apply_ablation(config, "lr-only")
    assert (lr_only.gamma, lr_only.gamma_lr_divisor) == (1.0, 100)
    with pytest.raises(ValueError, match="init-only, lr-only"):
        apply_ablation(config, "both")


def test_method_defaults():
    ours = RunConfig().resolved()
    assert (ours.gamma, ours.gamma_lr_divisor) == (0.1, 100.0)
    for kind in ("rbn", "rbn-", "iebn", "iebn-"):
        related = RunConfig(bn=kind).resolved()
        assert (related.gamma, related.gamma_lr_divisor) == (1.0, 1.0)
    asked = RunConfig(bn="rbn", gamma=0.5, gamma_lr_divisor=10).resolved()
    assert (asked.gamma, asked.gamma_lr_divisor) == (0.5, 10.0)
    assert RunConfig(bn="a2").resolved().gamma == 0.1


def test_defaults_per_dataset():
    cifar = RunConfig(dataset="cifar100").resolved()
    assert (cifar.model, cifar.epochs, cifar.batch_size) == (
        "resnet34",
        180,
        128,
    )
    cars = RunConfig(dataset="cars196").resolved()
    assert (cars.model, cars.batch_size) == ("resnet50", 64)
    assert (
        RunConfig(dataset="digits", seed=3).run_name()
        != RunConfig(dataset="digits", seed=4).run_name()
    )


def test_export_serves_the_saved_model(tmp_path):
    import tensorflow as tf

    from keras_bninit.harness.data import load_dataset

    record = run_experiment(
        _config(tmp_path, epochs=1, export=True), build_model=tiny_builder
    )
    x, _ = next(iter(load_dataset("digits").test_dataset()))
    model = keras.models.load_model(
        os.path.join(record["run_dir"], "model.keras")
    )
    served = tf.saved_model.load(os.path.join(record["run_dir"], "saved_model"))
    np.testing.assert_allclose(
        served.serve(x).numpy(),
        model.predict(x, verbose=0),
        rtol=1e-5,
        atol=1e-6,
    )


def test_diagnostics_are_recorded(tmp_path):
    record = run_experiment(
        _config(tmp_path, epochs=1, diagnostics=True), build_model=tiny_builder
    )
    files = os.listdir(os.path.join(record["run_dir"], "diagnostics"))
    assert {
        "bn_params.jsonl",
        "large_values.jsonl",
        "grad_factors.jsonl",
    } <= set(files)


def test_short_run_warns_once_and_precise_bn_does_not(tmp_path, recwarn):
    # 3 epochs of 21 steps leave 0.9^63 = 0.13 % of the running variance's
    # start (1), over 10 % of c^2 = 0.01: the warning names the fix.
    with pytest.warns(UserWarning, match="63 optimizer steps.*--precise-bn"):
        run_experiment(_config(tmp_path / "plain"), build_model=tiny_builder)
    recwarn.clear()
    for config in (
        _config(tmp_path / "c1", gamma=1.0),  # no c < 1: no warning
        _config(tmp_path / "long", epochs=6),  # 66 steps: enough
    ):
        run_experiment(config, build_model=tiny_builder)
    assert not [w for w in recwarn if "precise-bn" in str(w.message)]


def test_precise_bn_run_saves_the_recomputed_statistics(tmp_path, recwarn):
    from keras_bninit import batch_norm_layers, update_bn_stats
    from keras_bninit.harness.data import load_dataset

    record = run_experiment(
        _config(tmp_path, precise_bn=5), build_model=tiny_builder
    )
    assert not [w for w in recwarn if "precise-bn" in str(w.message)]
    assert record["config"]["precise_bn"] == 5
    model = keras.models.load_model(
        os.path.join(record["run_dir"], "model.keras")
    )
    saved = [
        keras.ops.convert_to_numpy(v)
        for layer in batch_norm_layers(model)
        for v in (layer.moving_mean, layer.moving_variance)
    ]
    # The best epoch's own first 5 training batches give the same numbers.
    splits = load_dataset("digits")
    epoch = record["best_epoch"] - 1
    assert update_bn_stats(model, splits.train_dataset(2, epoch), 5) == 5
    again = [
        keras.ops.convert_to_numpy(v)
        for layer in batch_norm_layers(model)
        for v in (layer.moving_mean, layer.moving_variance)
    ]
    for a, b in zip(saved, again):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    # ... and the validation accuracy is measured with them.
    val = model.evaluate(splits.val_dataset(), verbose=0, return_dict=True)
    assert val["accuracy"] == pytest.approx(record["val_accuracy"])


@pytest.mark.parametrize("semantics", ["torch", "keras"])
def test_the_reference_forms_by_default_kerass_on_request(tmp_path, semantics):
    from keras_bninit import TorchSGD, batch_norm_layers
    from keras_bninit.harness.config import KERAS_SEMANTICS

    forms = KERAS_SEMANTICS if semantics == "keras" else {}
    record = run_experiment(
        _config(tmp_path, epochs=1, **forms), build_model=tiny_builder
    )
    assert record["status"] == "ok"
    model = keras.models.load_model(
        os.path.join(record["run_dir"], "model.keras")
    )
    inner = model.optimizer.inner_optimizer
    schedule = inner._learning_rate  # the schedule, not its value
    torch = semantics == "torch"
    assert (type(inner) is TorchSGD) == torch
    assert type(inner) in (TorchSGD, keras.optimizers.SGD)
    assert schedule.per_group_floor == torch
    conventions = {
        layer.name: getattr(layer, "moving_variance_convention", "biased")
        for layer in batch_norm_layers(model)
    }
    expected = "unbiased" if torch else "biased"
    assert conventions == {"input_bn": expected, "bn1": expected}
    with pytest.raises(ValueError, match="sgd='yes'"):
        validate(_config(tmp_path, sgd="yes"))
    with pytest.raises(ValueError, match="precise_bn=-1"):
        validate(_config(tmp_path, precise_bn=-1))


def test_output_dir_must_be_writable_and_not_inside_a_file(
    tmp_path, monkeypatch
):
    from keras_bninit.harness.experiment import check_output_dir

    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match=r"inside the file '.*file'"):
        check_output_dir(tmp_path / "file" / "a" / "b")
    with pytest.raises(ValueError, match="is a file"):
        check_output_dir(tmp_path / "file")
    check_output_dir(tmp_path / "new" / "deeper")  # creatable: fine
    assert not (tmp_path / "new").exists()  # and nothing was created
    # (The tests run as root, who may write anywhere: os.access stands in.)
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    with pytest.raises(ValueError, match=r"is not writable by this user"):
        check_output_dir(tmp_path / "new")


def test_steps_per_execution_gives_the_same_run(tmp_path):
    # 21 steps per epoch: 3 per execution divide them (one data iterator
    # for the run), 4 leave a partial last group (one per epoch).
    runs = [
        run_experiment(
            _config(
                tmp_path / str(n),
                epochs=2,
                steps_per_execution=n,
                deterministic=True,
            ),
            build_model=tiny_builder,
        )
        for n in (1, 3, 4)
    ]
    one, three, four = runs
    for other in (three, four):
        for key in ("loss", "accuracy", "val_loss", "val_accuracy", "lr"):
            np.testing.assert_allclose(
                other["history"][key], one["history"][key], rtol=1e-6
            )
        assert other["test_accuracy"] == one["test_accuracy"]
    assert four["config"]["steps_per_execution"] == 4


@pytest.mark.parametrize(
    "precision, compute",
    [("mixed_bfloat16", "bfloat16"), ("mixed_float16", "float16")],
)
def test_precision_builds_and_trains_under_the_policy(
    tmp_path, precision, compute
):
    before = keras.config.dtype_policy().name
    record = run_experiment(
        _config(tmp_path, epochs=1, precision=precision),
        build_model=tiny_builder,
    )
    assert keras.config.dtype_policy().name == before  # restored
    assert record["status"] == "ok"
    assert record["config"]["precision"] == precision
    model = keras.saving.load_model(
        os.path.join(record["run_dir"], "model.keras")
    )
    conv = model.get_layer("conv1")
    assert conv.compute_dtype == compute and conv.variable_dtype == "float32"
    if precision == "mixed_float16":  # dynamic loss scaling
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)


def test_train_py_defaults_follow_the_authors_pytorch_code(float64):
    """train.py's optimizer and BN (RunConfig's defaults) through 100 steps
    with 4 learning-rate changes equal a NumPy implementation of PyTorch's
    SGD, per-group CosineAnnealingLR and BN running statistics."""
    from _reference import (
        _per_group_cosine,
        _pytorch_dense_bn_dense,
        dense_bn_dense,
    )

    from keras_bninit.harness.config import ETA_MIN
    from keras_bninit.harness.experiment import make_optimizer
    from keras_bninit.norms import norm_layer

    steps_per_epoch, batch = 20, 8
    config = RunConfig(model="tiny", epochs=5).resolved("tensorflow")
    assert (config.sgd, config.moving_variance, config.scale_lr_floor) == (
        "torch",
        "unbiased",
        "per_group",
    )
    rng = np.random.default_rng(3)
    x = rng.normal(size=(100 * batch, 3)) * [1.0, 2.0, 0.5] + [0.5, -1, 2]
    y = rng.normal(size=(100 * batch, 2))
    bn = norm_layer(config.bn, moving_variance=config.moving_variance)(
        gamma=config.gamma, name="bn"
    )
    model, names = dense_bn_dense(bn)
    initial = {k: keras.ops.convert_to_numpy(v) for k, v in names.items()}
    model.compile(make_optimizer(config, steps_per_epoch), "mse")
    model.fit(x, y, batch_size=batch, epochs=1, shuffle=False, verbose=0)

    def rate(name, step):
        lr = (
            config.lr / config.gamma_lr_divisor
            if name == "gamma"
            else config.lr
        )
        return _per_group_cosine(
            lr, ETA_MIN, config.epochs, step // steps_per_epoch
        )

    batches = [
        (x[i : i + batch], y[i : i + batch]) for i in range(0, len(x), batch)
    ]
    expected, mean, var = _pytorch_dense_bn_dense(
        initial, batches, rate, config.weight_decay, config.momentum
    )
    for name, variable in names.items():
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(variable),
            expected[name],
            rtol=1e-6,
            atol=1e-9,
            err_msg=name,
        )
    for got, want in ((bn.moving_mean, mean), (bn.moving_variance, var)):
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(got), want, rtol=1e-6, atol=1e-9
        )
    # --keras-semantics gives Keras's SGD (the other forms: test_optimizers).
    keras_config = RunConfig.keras_semantics(model="tiny", epochs=5)
    assert make_optimizer(
        keras_config.resolved(), 20
    ).inner_optimizer.__class__ is (keras.optimizers.SGD)
