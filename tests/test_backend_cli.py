"""train.py --backend: the harness (tf.data input) training a JAX or PyTorch
model, and the TensorFlow-only SavedModel export refused by name."""

import glob
import json
import os

import keras
import numpy as np
import pytest
from _backend import TRAIN_PY, run_python

import keras_bninit  # noqa: F401  (registers the layers for loading)


def _train(*args, backend_env=None):
    return run_python(
        TRAIN_PY,
        *args,
        backend=backend_env or "",
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
        timeout=900,
    )


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_run_trains_on_the_chosen_backend(backend, tmp_path):
    pytest.importorskip(backend)
    out = _train(
        "run",
        "--dataset",
        "digits",
        "--model",
        "resnet8",
        "--epochs",
        "1",
        "--batch-size",
        "64",
        "--backend",
        backend,
        "--out",
        str(tmp_path),
    )
    assert out.returncode == 0, out.stderr[-3000:]
    (run_dir,) = glob.glob(str(tmp_path / "*"))
    with open(os.path.join(run_dir, "result.json")) as f:
        record = json.load(f)
    assert record["versions"]["keras_backend"] == backend
    assert 0.0 <= record["test_accuracy"] <= 1.0
    # The .keras file written on that backend loads here (TensorFlow).
    model = keras.models.load_model(os.path.join(run_dir, "model.keras"))
    assert all("." not in layer.name for layer in model.layers)
    logits = model.predict(np.zeros((2, 8, 8, 1), "float32"), verbose=0)
    assert logits.shape == (2, 10)


def test_export_needs_tensorflow_and_bad_backend_is_refused(tmp_path):
    args = ["run", "--dataset", "digits", "--model", "resnet8"]
    args += ["--epochs", "1", "--out", str(tmp_path)]
    out = _train(*args, "--backend", "jax", "--export")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "train.py: error: --export writes a SavedModel, which needs "
        "--backend tensorflow (backend: jax); model.keras loads everywhere"
    ]
    # The same through KERAS_BACKEND.
    out = _train(*args, "--export", backend_env="torch")
    assert out.returncode == 2
    assert "(backend: torch)" in out.stderr
    out = _train(*args, "--backend", "mxnet")
    assert out.returncode == 2
    assert "invalid choice: 'mxnet'" in out.stderr
    assert "'jax'" in out.stderr
    assert os.listdir(tmp_path) == []


def test_run_config_export_needs_tensorflow():
    code = (
        "from keras_bninit.harness.experiment import RunConfig, validate\n"
        "try:\n"
        "    validate(RunConfig(dataset='digits', model='resnet8', "
        "export=True))\n"
        "except ValueError as error:\n"
        "    print(error)\n"
    )
    out = run_python("-c", code, backend="jax")
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == (
        "export=True (a SavedModel) needs the TensorFlow backend; Keras runs "
        "on 'jax'. The run's model.keras loads on every backend."
    )
