"""The next program of a sweep built and traced while a run trains.

`ProgramCache.expect` tells a worker which runs come next; during a run,
the next program it has not built is built, and its train and evaluation
steps are traced on a thread (`harness.ahead`). These tests check that
the program is then not traced again, that neither the run trained
meanwhile nor the next one changes by a bit (TensorFlow, `deterministic`),
that a failed trace costs nothing but the trace, and that a local sweep
tells its worker the pending runs.
"""

import dataclasses
import threading
import types

import numpy as np
import pytest

from keras_bninit.harness import ahead, programs
from keras_bninit.harness.experiment import run_experiment
from tests.test_programs import FIRST, _config, same_run

# A program of its own on the same data: BASE without weight decay (whether
# kernels decay is structure; a = 1 and c = 1 are state).
OTHER = {
    "seed": 2,
    "gamma": 1.0,
    "gamma_lr_divisor": 1.0,
    "lr": 0.1,
    "weight_decay": 0.0,
}
TFDATA = {"input": "tfdata"}  # the memory path's runs are not traced ahead


@pytest.fixture
def traces(monkeypatch):
    """The threads that traced a train step (its Python runs only then)."""
    import keras

    seen = []
    train_step = keras.Model.train_step

    def counted(self, data):
        seen.append(threading.current_thread().name)
        return train_step(self, data)

    monkeypatch.setattr(keras.Model, "train_step", counted)
    return seen


def test_the_program_traced_ahead_is_not_traced_again_and_changes_no_run(
    tmp_path, traces
):
    cache = programs.ProgramCache()
    first = _config(tmp_path, **FIRST, **TFDATA)
    other = _config(tmp_path, **OTHER, **TFDATA)
    cache.expect([other])
    shared_first = run_experiment(first, programs=cache)
    assert (cache.built, cache.ahead) == (2, 1)  # OTHER's, during FIRST
    shared_other = run_experiment(other, programs=cache)
    assert (cache.built, cache.ahead, cache.hits) == (2, 1, 0)
    # FIRST traced its step; OTHER's was traced on the thread, not again.
    assert traces == ["MainThread", "keras_bninit program ahead"]
    for shared, values in ((shared_first, FIRST), (shared_other, OTHER)):
        alone = run_experiment(_config(tmp_path / "alone", **values, **TFDATA))
        same_run(shared, alone)


def test_a_mixed_float16_program_traced_ahead_changes_no_run(tmp_path, traces):
    # Its loss scale moves at the step on zeros; the run sets it back.
    values = {**TFDATA, "precision": "mixed_float16", "epochs": 1}
    cache = programs.ProgramCache()
    first, other = (
        _config(tmp_path, **FIRST, **values),
        _config(tmp_path, **OTHER, **values),
    )
    cache.expect([other])
    run_experiment(first, programs=cache)
    shared = run_experiment(other, programs=cache)
    assert cache.ahead == 1
    assert traces == ["MainThread", "keras_bninit program ahead"]
    same_run(
        shared, run_experiment(_config(tmp_path / "alone", **OTHER, **values))
    )


def test_a_failed_trace_ahead_is_dropped_and_the_run_builds_its_program(
    tmp_path, monkeypatch, traces
):
    class Failing(ahead.Ahead):
        def run(self):
            self.error = RuntimeError("no memory left for the next program")

    monkeypatch.setattr(programs, "Ahead", Failing)
    cache = programs.ProgramCache()
    first = _config(tmp_path, **FIRST, **TFDATA, epochs=1)
    other = _config(tmp_path, **OTHER, **TFDATA, epochs=1)
    cache.expect([other])
    run_experiment(first, programs=cache)
    with pytest.warns(RuntimeWarning) as warned:
        record = run_experiment(other, programs=cache)
    assert [str(w.message) for w in warned if w.category is RuntimeWarning] == [
        "Tracing the next program ahead failed (RuntimeError: no memory "
        "left for the next program); its first run builds it again."
    ]
    assert record["status"] == "ok"
    assert (cache.built, cache.ahead) == (3, 1)
    assert traces == ["MainThread", "MainThread"]


def test_nothing_is_built_ahead_without_a_slot_a_next_program_or_the_builder(
    tmp_path,
):
    from keras_bninit import models

    first, other = _config(tmp_path, **FIRST), _config(tmp_path, **OTHER)
    tfdata = types.SimpleNamespace(element_spec=None)  # `tf.data` stands
    rows = object()  # the memory path's batches of rows
    for size, expected, builder, data, made in (
        (2, [other], None, tfdata, True),
        (2, [other], models.build, tfdata, True),
        (2, [], None, tfdata, False),  # nothing expected (a Ray worker's)
        (2, [first], None, tfdata, False),  # the same program: built
        (2, [other], lambda *a, **k: None, tfdata, False),  # another builder
        (1, [other], None, tfdata, False),  # no free slot: nothing dropped
        (2, [other], None, rows, False),  # not tf.data
        # TensorFlow's determinism is global: not the next run's meanwhile.
        (
            2,
            [dataclasses.replace(other, deterministic=False)],
            None,
            tfdata,
            False,
        ),
    ):
        cache = programs.ProgramCache(size=size)
        cache._programs[programs.program_key(first, models.build)] = None
        cache.expect(expected, builder)
        callback = cache.ahead_callback(first, None, models.build, data, data)
        assert (callback is not None) == made, (size, expected, builder, data)
        # Told once: the run after is told again.
        again = cache.ahead_callback(first, None, models.build, data, data)
        assert again is None


def test_zeros_have_the_spec_of_the_data_they_stand_for():
    import tensorflow as tf

    images = tf.TensorSpec((None, 8, 8, 1), tf.float32)
    labels = tf.TensorSpec((None,), tf.int64)
    zeros = ahead.zeros_like_spec(tf, (images, labels), 32)
    assert zeros.element_spec == (images, labels)
    x, y = next(iter(zeros))
    assert x.shape == (32, 8, 8, 1) and y.shape == (32,)
    assert not np.any(x.numpy()) and not np.any(y.numpy())
    fixed = (tf.TensorSpec((4, 3), tf.float16), tf.TensorSpec((4,), tf.int32))
    assert ahead.zeros_like_spec(tf, fixed, 32).element_spec == fixed
    ragged = tf.TensorSpec((None, None, 3), tf.float32)
    assert ahead.zeros_like_spec(tf, (ragged, labels), 32) is None
    mixed = (tf.TensorSpec((4, 3), tf.float32), labels)
    assert ahead.zeros_like_spec(tf, mixed, 32) is None


def test_a_local_sweep_tells_its_worker_the_runs_still_pending(
    tmp_path, monkeypatch
):
    from keras_bninit.harness import sweep
    from keras_bninit.harness.presets import expand
    from tests._tiny import tiny_zoo_builder

    told = []

    class Cache(programs.ProgramCache):
        def expect(self, configs, build_model=None):
            told.append(
                ([(c.weight_decay, c.seed) for c in configs], build_model)
            )
            super().expect(configs, build_model)

    monkeypatch.setattr(programs, "_WORKER", {"cache": Cache()})
    decayed = expand(
        [{"dataset": "digits", "gamma": 0.1}],
        "1-2",
        add_base=False,
        epochs=1,
        model="tiny",
    )
    runs = [  # two programs: with weight decay, and without
        run
        for one in decayed
        for run in (one, dataclasses.replace(one, weight_decay=0.0))
    ]
    sweep.run_sweep(runs, tmp_path, quiet=True, build_model=tiny_zoo_builder)
    pending = [(r.weight_decay, r.seed) for r in runs]
    assert told == [(pending[i + 1 :], tiny_zoo_builder) for i in range(4)]
    # The second tiny program was built while the first run trained.
    assert programs.worker_programs().ahead == 1
    assert programs.worker_programs().built == 2
