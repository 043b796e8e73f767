"""Shared compiled programs: a run trained in one equals the run alone.

`harness.programs.ProgramCache` lets a sweep worker train run after run in
one compiled model. These tests train a run after another run in the same
program and compare it with the same run trained alone: bit for bit on
TensorFlow with `deterministic`, within 1e-5 relative on JAX and PyTorch
(child processes, each on its backend).
"""

import dataclasses
import json
import os
import textwrap

import numpy as np
import pytest

from keras_bninit import models
from keras_bninit.harness import programs
from keras_bninit.harness.experiment import RunConfig, run_experiment
from tests._backend import run_python

EPOCHS = 2


def _config(out, **kwargs):
    values = {
        "dataset": "digits",
        "model": "resnet8",
        "epochs": EPOCHS,
        "out": str(out),
        "verbose": 0,
        "deterministic": True,
        "input": "memory",
    }
    return RunConfig(**{**values, **kwargs}).resolved()


# The second run differs from the first in everything that is state: seed,
# c, learning rate, epochs' schedule, a and weight decay. Its a is BASE's,
# 1: the scales' rate moves to lr(t) in the method's program, and back to
# lr(t) / 100 for the third run.
FIRST = {"seed": 1, "gamma": 0.1, "lr": 0.05, "gamma_lr_divisor": 100.0}
SECOND = {
    "seed": 2,
    "gamma": 0.5,
    "lr": 0.1,
    "gamma_lr_divisor": 1.0,
    "weight_decay": 5e-4,
}
# The third has the second's c: it takes back the second run's own model,
# its initial weights drawn again for seed 3 (`harness.initial_weights`).
THIRD = {**SECOND, "seed": 3, "lr": 0.05, "gamma_lr_divisor": 100.0}


def _weights(record):
    import keras

    model = keras.saving.load_model(
        os.path.join(record["run_dir"], "model.keras"), compile=True
    )
    weights = [np.asarray(w) for w in model.weights]
    optimizer = [
        np.asarray(keras.ops.convert_to_numpy(v))
        for v in model.optimizer.inner_optimizer.variables
    ]
    return model, weights, optimizer


def same_run(shared, alone):
    """Asserts that two records of one run are the same run, bit for bit:
    every epoch's numbers, the test accuracy, the saved weights and
    optimizer state and the saved config; returns the shared run's saved
    model."""
    timing = "epoch_time_s"
    assert shared["history"].pop(timing) != alone["history"].pop(timing)
    assert shared["history"] == alone["history"]  # every epoch, exactly
    assert shared["test_accuracy"] == alone["test_accuracy"]
    model, weights, optimizer = _weights(shared)
    model_alone, weights_alone, optimizer_alone = _weights(alone)
    assert len(weights + optimizer) == len(weights_alone + optimizer_alone)
    for a, b in zip(weights + optimizer, weights_alone + optimizer_alone):
        np.testing.assert_array_equal(a, b)
    config = json.dumps(model.get_config(), sort_keys=True)
    assert config == json.dumps(model_alone.get_config(), sort_keys=True)
    return model


def test_program_key_ignores_state_and_keeps_structure(tmp_path):
    base = _config(tmp_path, **FIRST)
    same = _config(tmp_path, **SECOND, epochs=7)
    assert programs.program_key(base) == programs.program_key(same)
    base_divisor = dataclasses.replace(base, gamma=1.0, gamma_lr_divisor=1.0)
    assert programs.program_key(base_divisor) == programs.program_key(base)
    for change in (
        {"batch_size": 32},
        {"input": "tfdata"},
        {"bn": "a1"},
        {"weight_decay": 0.0},
        {"momentum": 0.5},
        {"input_norm": "fixed"},
    ):
        other = dataclasses.replace(base, **change)
        assert programs.program_key(other) != programs.program_key(base), change
    with pytest.raises(ValueError, match="size"):
        programs.ProgramCache(size=0)


def test_a_run_in_a_shared_program_is_bit_identical_to_the_run_alone(
    tmp_path, monkeypatch
):
    import keras

    traces = []  # the train step's Python runs only while it is traced
    train_step = keras.Model.train_step

    def counted(self, data):
        traces.append(keras.backend.backend())
        return train_step(self, data)

    monkeypatch.setattr(keras.Model, "train_step", counted)
    cache = programs.ProgramCache()
    run_experiment(_config(tmp_path / "shared", **FIRST), programs=cache)
    second = run_experiment(
        _config(tmp_path / "shared", **SECOND), programs=cache
    )
    assert (cache.built, cache.hits, cache.redrawn) == (1, 1, 0)
    third = run_experiment(
        _config(tmp_path / "shared", **THIRD), programs=cache
    )
    assert (cache.built, cache.hits, cache.redrawn) == (1, 2, 1)
    # One trace per program: on TensorFlow, metric variables created in the
    # first trace made tf.function trace the step twice.
    assert traces == ["tensorflow"]
    for values, shared in ((SECOND, second), (THIRD, third)):
        alone = run_experiment(_config(tmp_path / "alone", **values))
        model = same_run(shared, alone)
        # The saved model is the run's own: its config (c, the seeds of its
        # initializers) and optimizer (a, weight decay) are the run's.
        config = json.dumps(model.get_config(), sort_keys=True)
        assert '"gamma": 0.5' in config or '"value": 0.5' in config
        assert f'"seed": {shared["complex_seed"]}' in config
        assert model.optimizer.gamma_lr_divisor == values["gamma_lr_divisor"]
        assert model.optimizer.weight_decay == values["weight_decay"]
        assert model.optimizer.inner_optimizer.learning_rate is not None
    assert traces == ["tensorflow"] * 3  # and one for each run alone


def test_table_1a_grid_compiles_twice_and_evicts_the_oldest(
    tmp_path, monkeypatch
):
    import keras

    cleared = []  # the session is cleared only to free a dropped program
    clear_session = keras.backend.clear_session
    monkeypatch.setattr(
        keras.backend,
        "clear_session",
        lambda *a, **k: cleared.append(1) or clear_session(*a, **k),
    )
    cache = programs.ProgramCache(size=2)
    seen = []
    for lr in (0.05, 0.1):
        for gamma in (0.1, 0.5):
            cfg = _config(tmp_path, epochs=1, lr=lr, gamma=gamma, seed=3)
            run_experiment(cfg, programs=cache)
            seen.append(cache.built)
        base = dataclasses.replace(
            cfg, gamma=1.0, gamma_lr_divisor=1.0, input_norm="offline"
        )
        run_experiment(base, programs=cache)
        seen.append(cache.built)
    assert seen == [1, 1, 2, 2, 2, 2] and cache.hits == 4
    # The second rate's runs took back the first rate's models (same c).
    assert cache.redrawn == 3 and len(cache._run_models) == 3
    assert cleared == []
    # A third program drops the least recently used (the method's), and
    # its runs' models with it.
    other = _config(tmp_path, epochs=1, seed=3, batch_size=32)
    run_experiment(other, programs=cache)
    assert cache.built == 3 and len(cache._programs) == 2
    assert cleared == [1]
    assert programs.program_key(base, models.build) in cache._programs
    assert {key for key, _ in cache._run_models} == set(cache._programs)
    # A failed run drops its program's models too.
    cache.discard(other, models.build)
    assert {key for key, _ in cache._run_models} == {
        programs.program_key(base, models.build)
    }


OTHER_BACKEND = textwrap.dedent(
    """
    import json, sys
    from keras_bninit.harness import programs
    from keras_bninit.harness.experiment import RunConfig, run_experiment

    out = sys.argv[1]
    first, second, third = (json.loads(a) for a in sys.argv[2:5])

    def config(where, values):
        return RunConfig(
            dataset="digits", model="resnet8", epochs=2, out=out + where,
            verbose=0, input="memory", **values
        ).resolved()

    cache = programs.ProgramCache()
    run_experiment(config("/shared", first), programs=cache)
    shared = [run_experiment(config("/shared", values), programs=cache)
              for values in (second, third)]
    alone = [run_experiment(config("/alone", values))
             for values in (second, third)]
    print(json.dumps([cache.built, cache.hits, cache.redrawn,
                      [r["history"] for r in shared],
                      [r["history"] for r in alone]]))
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_shared_programs_on_jax_and_torch_agree_with_runs_alone(
    tmp_path, backend
):
    result = run_python(
        "-c",
        OTHER_BACKEND,
        str(tmp_path),
        json.dumps(FIRST),
        json.dumps(SECOND),
        json.dumps(THIRD),
        backend=backend,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    built, hits, redrawn, shared, alone = json.loads(
        result.stdout.splitlines()[-1]
    )
    assert (built, hits, redrawn) == (1, 2, 1)
    for run, run_alone in zip(shared, alone):
        assert run.keys() == run_alone.keys()
        for key in ("loss", "val_loss", "accuracy", "val_accuracy"):
            np.testing.assert_allclose(run[key], run_alone[key], rtol=1e-5)


class _Killed(BaseException):
    """Stands for the worker being killed: not caught as a run failure."""


def _sweep_records(sweep_dir):
    from keras_bninit.harness.store import ResultStore

    with ResultStore(sweep_dir) as store:
        records = store.records()
    out = {}
    for record in records:
        history = dict(record["history"])
        history.pop("epoch_time_s")
        config = record["config"]
        key = (config["gamma"], config["seed"])
        assert key not in out  # each run once
        out[key] = (history, record["test_accuracy"], record["best_epoch"])
    return out


def test_a_worker_killed_inside_a_shared_program_resumes_to_the_same_records(
    tmp_path, monkeypatch
):
    from keras_bninit.harness import experiment, sweep
    from keras_bninit.harness.presets import expand
    from tests._tiny import tiny_zoo_builder

    runs = expand(
        [{"dataset": "digits", "gamma": 0.1}],
        "1-2",
        epochs=3,
        model="tiny",
        deterministic=True,
        input="memory",
    )
    monkeypatch.setattr(programs, "_WORKER", {})  # a new worker process
    sweep.run_sweep(
        runs, tmp_path / "whole", quiet=True, build_model=tiny_zoo_builder
    )
    whole = _sweep_records(tmp_path / "whole")
    assert len(whole) == 4

    started = []
    callbacks = experiment._callbacks

    def killing(config, splits, run_dir, extra):
        import keras

        class Kill(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                if len(started) == 3 and epoch == 1:  # the 3rd run, shared
                    raise _Killed()

        started.append(config.run_name())
        return [*callbacks(config, splits, run_dir, extra), Kill()]

    monkeypatch.setattr(programs, "_WORKER", {})
    monkeypatch.setattr(experiment, "_callbacks", killing)
    with pytest.raises(_Killed):
        sweep.run_sweep(
            runs, tmp_path / "killed", quiet=True, build_model=tiny_zoo_builder
        )
    # It died in a shared program, in a model taken back from the first run.
    assert programs.worker_programs().hits >= 1
    assert programs.worker_programs().redrawn >= 1
    monkeypatch.setattr(experiment, "_callbacks", callbacks)
    monkeypatch.setattr(programs, "_WORKER", {})  # the rerun's new process
    counts = sweep.run_sweep(
        runs, tmp_path / "killed", quiet=True, build_model=tiny_zoo_builder
    )
    assert counts["ran"] == 2 and counts["failed"] == 0
    assert _sweep_records(tmp_path / "killed") == whole


def test_checkpoint_bytes_template_writes_what_load_weights_reads(tmp_path):
    import keras

    from keras_bninit import models
    from keras_bninit.harness import weights_layout as wl

    def built(seed):
        keras.utils.set_random_seed(seed)
        model = models.build("resnet8", num_classes=10, input_shape=(8, 8, 1))
        cfg = _config(tmp_path)
        model.compile(programs.make_optimizer(cfg, 5), "mse")
        model.optimizer.build(model.trainable_variables)
        return model

    model = built(1)
    learned = []

    def learn():
        learned.append(1)
        return wl._learn_layout(model, wl._snapshot(model), str(tmp_path))

    state = wl._state_variables(model)
    layout = wl.cached_layout(model, state, learn)
    assert layout._template is not None  # the fast path was learned
    assert wl.cached_layout(model, state, learn) is layout and learned == [1]
    # Other values (another seed's weights, a moved optimizer) written from
    # the template load back exactly, through Keras's own reader.
    other = built(2)
    for v in other.optimizer.inner_optimizer.variables:  # saved state
        v.assign(keras.ops.ones_like(v) * 3)
    values = wl._snapshot(other)
    path = str(tmp_path / "fast.weights.h5")
    layout.write(path, values)
    model.load_weights(path)
    for a, b in zip(wl._snapshot(model), values):
        np.testing.assert_array_equal(a, b)
    assert layout.matches(path, values)
    # A changed set of state variables learns again.
    wl.cached_layout(model, state[:-1], learn)
    assert learned == [1, 1]


def test_state_is_read_and_assigned_with_tensorflows_own_ops(tmp_path):
    import keras

    from keras_bninit.harness import _tf
    from keras_bninit.harness import weights_layout as wl

    keras.utils.set_random_seed(3)
    model = models.build("resnet8", num_classes=10, input_shape=(8, 8, 1))
    model.compile(programs.make_optimizer(_config(tmp_path), 5), "mse")
    model.optimizer.build(model.trainable_variables)
    state = wl._state_variables(model)
    eager = [np.array(keras.ops.convert_to_numpy(v)) for v in state]
    if keras.backend.backend() != "tensorflow":
        assert wl._batch(state) is None
        return
    values = wl._snapshot(model)
    assert [v.dtype for v in values] == [v.dtype for v in eager]
    for a, b in zip(values, eager):
        np.testing.assert_array_equal(a, b)
    # Copies: assigning the model leaves them as they were.
    marked = [np.full(v.shape, k + 1, v.dtype) for k, v in enumerate(state)]
    wl.assign_state(model, marked)
    for variable, a, b, mark in zip(state, values, eager, marked):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(variable), mark
        )
    # A value of another dtype or shape: the batch assigns nothing, and
    # assign_state assigns variable by variable as before.
    wide = [
        np.asarray(v, "float64") if v.dtype == "float32" else v for v in eager
    ]
    assert not _tf.VariableBatch(state).assign(wide)
    assert not _tf.VariableBatch(state).assign(eager[:-1])
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(state[0]), marked[0]
    )
    wl.assign_state(model, wide)
    for variable, b in zip(state, eager):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(variable), b)


def _builder_of_width(width):
    import keras

    from keras_bninit.initializers import VarianceScaling

    def builder(name, num_classes, input_shape, **kwargs):
        # The zoo's initializers: its runs' models could be taken back.
        inputs = keras.Input(input_shape)
        x = keras.layers.Conv2D(
            width, 3, name="conv", kernel_initializer=VarianceScaling(key="c")
        )(inputs)
        x = keras.layers.GlobalAveragePooling2D()(x)
        head = keras.layers.Dense(
            num_classes, kernel_initializer=VarianceScaling(key="d")
        )
        return keras.Model(inputs, head(x))

    return builder


def test_builders_of_one_name_and_other_shapes_never_share(tmp_path):
    narrow, wide = _builder_of_width(4), _builder_of_width(8)
    cfg = _config(tmp_path, epochs=1, model="tiny", seed=1)
    assert programs.program_key(cfg, narrow) == programs.program_key(cfg, wide)
    assert programs.program_key(cfg, narrow) != programs.program_key(cfg)
    cache = programs.ProgramCache()
    run_experiment(cfg, build_model=narrow, programs=cache)
    record = run_experiment(
        dataclasses.replace(cfg, seed=2), build_model=wide, programs=cache
    )
    assert record["status"] == "ok"
    assert (cache.built, cache.hits) == (2, 0)  # rebuilt, not shared
    assert cache.redrawn == 0  # nor the first run's model taken back
    _, weights, _ = _weights(record)
    assert weights[0].shape == (3, 3, 1, 8)  # the wide one was trained
    # The same builder again takes the wide run's model back.
    again = run_experiment(
        dataclasses.replace(cfg, seed=3), build_model=wide, programs=cache
    )
    assert again["status"] == "ok" and cache.redrawn == 1


def test_jax_cache_settings_default_user_folder_and_off_switch():
    from keras_bninit.harness import jax_cache

    env = {"XDG_CACHE_HOME": "/x/cache"}
    assert jax_cache.configure(env) == "/x/cache/keras_bninit/jax"
    assert env["JAX_COMPILATION_CACHE_DIR"] == "/x/cache/keras_bninit/jax"
    assert env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] == "0"
    mine = {"JAX_COMPILATION_CACHE_DIR": "/mine"}  # the user's folder wins
    assert jax_cache.configure(mine) == "/mine"
    off = dict(env)
    assert jax_cache.configure(off, enabled=False) is None
    assert "JAX_COMPILATION_CACHE_DIR" not in off
    assert off["KERAS_BNINIT_COMPILE_CACHE"] == "off"
    assert jax_cache.configure(off) is None  # stays off in child processes
    home = {"HOME": "/h"}
    assert jax_cache.default_directory(home).endswith(
        os.path.join(".cache", "keras_bninit", "jax")
    )


@pytest.mark.slow
@pytest.mark.parametrize("off", [False, True])
def test_train_py_on_jax_fills_the_persistent_cache_unless_off(tmp_path, off):
    args = ["--no-compile-cache"] if off else []
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"))
    for name in ("JAX_COMPILATION_CACHE_DIR", "KERAS_BNINIT_COMPILE_CACHE"):
        env.pop(name, None)
    result = run_python(
        os.path.join(os.path.dirname(os.path.dirname(__file__)), "train.py"),
        "run", "--backend", "jax", "--dataset", "digits", "--model",
        "resnet8", "--epochs", "1", "--out", str(tmp_path / "runs"), *args,
        env=env, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    folder = tmp_path / "cache" / "keras_bninit" / "jax"
    entries = list(folder.iterdir()) if folder.exists() else []
    assert (len(entries) == 0) if off else (len(entries) >= 2)


def test_keras_saving_caches_filled_and_the_saved_file_unchanged(tmp_path):
    import zipfile

    import h5py
    import keras
    from keras.src.saving import saving_lib

    from keras_bninit.harness._keras_saving import _TYPES, fill_saving_caches

    keras.backend.clear_session()  # Keras's global state, sets included
    keras.utils.set_random_seed(5)
    model = models.build("resnet8", num_classes=10, input_shape=(8, 8, 1))
    model.compile(programs.make_optimizer(_config(tmp_path), 5), "mse")
    model.optimizer.build(model.trainable_variables)

    def saved(name):
        model.save(tmp_path / f"{name}.keras")
        with zipfile.ZipFile(tmp_path / f"{name}.keras") as archive:
            config = archive.read("config.json")
            archive.extract("model.weights.h5", tmp_path / name)
        arrays = {}
        with h5py.File(tmp_path / name / "model.weights.h5") as f:
            f.visititems(
                lambda key, obj: (
                    arrays.__setitem__(key, obj[()])
                    if isinstance(obj, h5py.Dataset)
                    else None
                )
            )
        return config, arrays

    plain = saved("plain")
    assert fill_saving_caches() == len(_TYPES)
    assert fill_saving_caches() == 0  # full: nothing computed again
    for obj_type in _TYPES:  # Keras's lookup now finds the set it built
        first = saving_lib.get_attr_skipset(obj_type)
        assert saving_lib.get_attr_skipset(obj_type) is first
        assert "_self_unconditional_dependency_names" in first
    filled = saved("filled")
    assert plain[0] == filled[0]  # config.json, byte for byte
    assert plain[1].keys() == filled[1].keys() and len(plain[1]) > 70
    for key, array in plain[1].items():
        np.testing.assert_array_equal(filled[1][key], array)
    keras.backend.clear_session()  # and cleared with it
    assert fill_saving_caches() == len(_TYPES)
