"""train.py where TensorFlow is not installed, and TensorFlow kept off the
GPUs of the other backends.

Each test runs a fresh Python whose import system cannot find
`tensorflow` or `tensorflow_datasets` (a `sitecustomize` that hides them
from the path finder, as on a machine without them): `import tensorflow`
raises ModuleNotFoundError there, so any use of TensorFlow on the way
fails the run.
"""

import json
import os
import textwrap

import pytest
from _backend import TRAIN_PY, run_python

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_HIDE_TENSORFLOW = textwrap.dedent(
    """
    import importlib.machinery
    import os
    import sys

    _HIDDEN = (
        "tensorflow",
        "tensorflow_datasets",
        *os.environ.get("HIDE_MODULES", "").split(),
    )


    class _Hide(importlib.machinery.PathFinder):
        @classmethod
        def find_spec(cls, name, path=None, target=None):
            if name.split(".")[0] in _HIDDEN:
                return None
            return super().find_spec(name, path, target)


    sys.meta_path[:] = [
        _Hide if f is importlib.machinery.PathFinder else f
        for f in sys.meta_path
    ]
    """
)


@pytest.fixture()
def no_tf_env(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(_HIDE_TENSORFLOW)
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    env["PYTHONPATH"] = os.pathsep.join([str(site), ROOT])
    return env


def _train(env, *args, cwd):
    return run_python(TRAIN_PY, *args, env=env, cwd=cwd, timeout=900)


def test_tensorflow_is_really_hidden(no_tf_env, tmp_path):
    probe = run_python("-c", "import tensorflow", env=no_tf_env)
    assert probe.returncode == 1
    assert "ModuleNotFoundError" in probe.stderr


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_run_without_tensorflow_learns_digits(no_tf_env, tmp_path, backend):
    # The check: resnet8, 3 epochs, seed 1, precise BN. Three
    # epochs of 21 steps vary by a few points from seed to seed (seeds
    # 1-6 on JAX: 0.83-0.93), so the bar is 0.8, far above chance (0.1).
    result = _train(
        no_tf_env,
        "run",
        "--backend",
        backend,
        "--dataset",
        "digits",
        "--model",
        "resnet8",
        "--epochs",
        "3",
        "--seed",
        "1",
        "--precise-bn",
        "--quiet",
        "--out",
        "runs",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    (run,) = os.listdir(tmp_path / "runs")
    with open(tmp_path / "runs" / run / "result.json") as f:
        record = json.load(f)
    assert record["config"]["input"] == "memory"
    assert record["versions"]["keras_backend"] == backend
    assert record["versions"]["tensorflow"] is None
    assert record["test_accuracy"] >= 0.8


@pytest.mark.slow
def test_jax_sweep_and_report_without_tensorflow(no_tf_env, tmp_path):
    # Nor matplotlib, which a GPU machine may lack: the report has no plot.
    no_tf_env = dict(no_tf_env, HIDE_MODULES="matplotlib")
    common = ["--dataset", "digits", "--model", "resnet8", "--epochs", "1"]
    result = _train(
        no_tf_env,
        "sweep",
        *common,
        "--gamma",
        "0.1",
        "--seeds",
        "1-2",
        "--no-base",
        "--precise-bn",
        "--backend",
        "jax",
        "--quiet",
        "--out",
        "sweep",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = _train(no_tf_env, "report", "sweep", cwd=tmp_path)
    assert report.returncode == 0, report.stderr[-2000:]
    assert "c=0.1" in report.stdout
    assert "(no plots: matplotlib is not installed)" in report.stdout
    assert os.path.isfile(tmp_path / "sweep" / "report" / "report.md")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--input", "tfdata"], "--input tfdata needs TensorFlow"),
        (["--dataset", "cifar10"], "TensorFlow, which reads"),
    ],
)
def test_what_needs_tensorflow_is_refused_in_one_line(
    no_tf_env, tmp_path, args, message
):
    result = _train(
        no_tf_env,
        "run",
        "--backend",
        "jax",
        "--model",
        "resnet8",
        *args,
        "--data-dir",
        str(tmp_path / "data"),
        "--out",
        "runs",
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not os.path.exists(tmp_path / "runs")


_GPU_PROBE = textwrap.dedent(
    """
    import tensorflow as tf
    from tensorflow.python.eager import context

    calls = []
    original = tf.config.set_visible_devices

    def record(devices, device_type=None):
        # Hiding must come before TensorFlow's runtime starts (first op).
        fresh = context.context()._context_handle is None
        calls.append((list(devices), device_type, fresh))
        return original(devices, device_type)

    tf.config.set_visible_devices = record
    import keras_bninit.harness.data  # the tf.data path imports TensorFlow
    print(calls)
    print(tf.config.get_visible_devices("GPU"))
    """
)


@pytest.mark.parametrize(
    "backend, hidden", [("jax", True), ("torch", True), ("tensorflow", False)]
)
def test_gpus_are_hidden_from_tensorflow_off_its_backend(backend, hidden):
    result = run_python(
        "-c", _GPU_PROBE, backend=backend, env=dict(os.environ, PYTHONPATH=ROOT)
    )
    assert result.returncode == 0, result.stderr[-2000:]
    calls, visible = result.stdout.strip().splitlines()[-2:]
    if hidden:
        assert calls == "[([], 'GPU', True)]"
        assert visible == "[]"
    else:
        assert calls == "[]"
