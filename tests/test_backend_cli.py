"""train.py --backend: the harness (tf.data input) training a JAX or PyTorch
model, and the TensorFlow-only SavedModel export refused by name."""

import glob
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import keras_bninit  # noqa: F401  (registers the layers for loading)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _train(*args, backend_env=None):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1")
    env.pop("KERAS_BACKEND", None)
    if backend_env:
        env["KERAS_BACKEND"] = backend_env
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "train.py"), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
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
    env = dict(os.environ, KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="3")
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == (
        "export=True (a SavedModel) needs the TensorFlow backend; Keras runs "
        "on 'jax'. The run's model.keras loads on every backend."
    )
