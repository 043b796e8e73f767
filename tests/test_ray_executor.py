"""RayExecutor: a sweep's runs as Ray tasks, on a local Ray of 2 CPUs."""

import dataclasses
import functools
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import keras
import pytest
from _backend import TRAIN_PY, run_python

from keras_bninit.harness import jax_cache
from keras_bninit.harness.presets import expand
from keras_bninit.harness.ray_executor import GPU_SHARING_ENV, RayExecutor
from keras_bninit.harness.store import ResultStore
from keras_bninit.harness.sweep import run_sweep
from tests._tiny import tiny_builder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1")


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray for the module (start-up ~3 s, workers import TF once).

    Executors find it running and use it without stopping it.
    """
    ray = pytest.importorskip("ray")
    import logging

    # pytest imports this file as a top-level module that Ray's workers
    # cannot import: its functions (run_fn, builders) travel by value.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.ERROR)
    yield ray
    ray.shutdown()


def _runs(seeds="1-2", epochs=2):
    runs = expand(
        [{"dataset": "digits", "gamma": 0.1}],
        seeds,
        epochs=epochs,
        batch_size=32,
    )
    return [dataclasses.replace(r, model="tiny") for r in runs]


def _by_run(sweep_dir):
    with ResultStore(sweep_dir) as store:
        assert store.claims() == {}
        return {
            (r["config"]["gamma"], r["config"]["seed"]): r
            for r in store.records(status=None)
        }


class _KillWorker(keras.callbacks.Callback):
    def __init__(self, marker):
        super().__init__()
        self.marker = marker

    def on_epoch_end(self, epoch, logs=None):
        with open(self.marker, "a") as f:
            f.write(f"killed after epoch {epoch + 1}\n")
        os.kill(os.getpid(), signal.SIGKILL)


def _die_once(marker, name, **kwargs):
    """The tiny model; the first run to train kills its worker once.

    The worker dies by SIGKILL right after its run's first epoch is
    committed (this callback comes after the run's checkpoint callback), so
    Ray's retry must resume from that checkpoint: a fit that starts past
    epoch 0 notes it in `marker`.
    """
    model = tiny_builder(name, **kwargs)
    fit = model.fit

    def fit_with_hook(*args, callbacks=(), initial_epoch=0, **kw):
        if initial_epoch:
            with open(marker, "a") as f:
                f.write(f"resumed at epoch {initial_epoch}\n")
        try:
            os.close(os.open(f"{marker}.lock", os.O_CREAT | os.O_EXCL))
            callbacks = [*callbacks, _KillWorker(marker)]
        except FileExistsError:
            pass  # the worker was killed once already
        return fit(
            *args, callbacks=callbacks, initial_epoch=initial_epoch, **kw
        )

    model.fit = fit_with_hook
    return model


@pytest.mark.slow
def test_same_accuracies_as_local_and_killed_worker_resumes(
    local_ray, tmp_path, capsys
):
    runs = _runs()
    local = tmp_path / "local"
    run_sweep(runs, local, build_model=tiny_builder, quiet=True)

    marker = tmp_path / "killed.txt"
    sweep = tmp_path / "ray"
    executor = RayExecutor(workers=2)
    counts = run_sweep(
        runs,
        sweep,
        build_model=functools.partial(_die_once, str(marker)),
        executor=executor,
    )
    assert counts == {"total": 4, "skipped": 0, "ran": 4, "failed": 0}
    # The killed run was retried by Ray and resumed after its first epoch.
    assert marker.read_text() == "killed after epoch 1\nresumed at epoch 1\n"
    expected, got = _by_run(local), _by_run(sweep)
    assert sorted(got) == [(0.1, 1), (0.1, 2), (1.0, 1), (1.0, 2)]
    for key, record in got.items():
        assert record["status"] == "ok"
        assert record["test_accuracy"] == expected[key]["test_accuracy"]
        assert (
            record["history"]["val_loss"]
            == (expected[key]["history"]["val_loss"])
        )
    # Real learning, so equal accuracies are not equal chance levels.
    assert max(r["test_accuracy"] for r in got.values()) > 0.3
    out = capsys.readouterr().out
    # The node: host name, IP and short Ray node id (one local node here).
    (host,) = set(re.findall(r"on (\S+ \([0-9a-f.:]+, node \w{8}\)) in", out))
    assert host.startswith(socket.gethostname() + " (")
    assert out.count("[sweep] finished ") == 4
    # Each finished line gives the run's test accuracy, as stored.
    for record in got.values():
        line = f"(ok, test accuracy {record['test_accuracy']:.4f}) on {host} in"
        assert line in out
    assert f"[sweep] ran on {host}: 4 runs, " in out
    # Two runs in flight from the start: the second is run 2/4.
    assert "[sweep] run 2/4 (0 done before or elsewhere, 1 running) " in out
    assert "[sweep] run 4/4 " in out and "remaining 0:00:" in out


@pytest.mark.slow
def test_ship_files_writes_run_folders_on_the_driver(local_ray, tmp_path):
    runs = _runs(seeds="1", epochs=1)
    executor = RayExecutor(workers=2, ship_files=True)
    run_sweep(runs, tmp_path, build_model=tiny_builder, executor=executor)
    for (gamma, seed), record in _by_run(tmp_path).items():
        config = next(r for r in runs if (r.gamma, r.seed) == (gamma, seed))
        run_dir = tmp_path / "runs" / config.run_name()
        assert record["run_dir"] == str(run_dir)
        assert record["config"]["out"] == str(tmp_path / "runs")
        names = {p.name for p in run_dir.iterdir()}
        assert {"result.json", "config.json", "epochs.json"} <= names
        assert "model.keras" in names
        model = keras.saving.load_model(run_dir / "model.keras")
        assert model.count_params() > 0
    # Nothing is left in the workers' node-local folders.
    from keras_bninit.harness.ray_executor import _node_out

    node_runs = _node_out(str(tmp_path / "runs"))
    assert not os.path.exists(os.path.dirname(node_runs))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_cpus_per_run": 0}, "num_cpus_per_run` must be a finite number"),
        ({"num_cpus_per_run": "2"}, "num_cpus_per_run` must be a number"),
        ({"num_gpus_per_run": -0.5}, "num_gpus_per_run` must be a finite"),
        ({"num_gpus_per_run": 1.5}, "above 1 must be a whole number"),
        ({"workers": 0}, "`workers` must be an integer >= 1. Received: 0"),
        ({"workers": 1.5}, "`workers` must be an integer"),
        ({"max_retries": -1}, "`max_retries` must be an integer >= 0"),
        ({"address": ""}, "'auto' or 'HOST:PORT'"),
    ],
)
def test_bad_options_name_the_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RayExecutor(**kwargs)


def test_task_env_hides_gpus_or_shares_their_memory(monkeypatch):
    monkeypatch.delenv("KERAS_BACKEND", raising=False)
    for name in ("KERAS_BNINIT_COMPILE_CACHE", *jax_cache.ENV_VARS):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    shared = RayExecutor(num_gpus_per_run=0.5).task_env()
    assert shared == {**GPU_SHARING_ENV, "TF_CPP_MIN_LOG_LEVEL": "2"}
    assert shared["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"
    assert shared["TF_FORCE_GPU_ALLOW_GROWTH"] == "true"
    for whole in (1, 2):
        env = RayExecutor(num_gpus_per_run=whole).task_env()
        assert env == {"TF_CPP_MIN_LOG_LEVEL": "2"}
    # No GPU asked for: none visible (Ray would leave them all visible).
    assert RayExecutor().task_env() == {
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "CUDA_VISIBLE_DEVICES": "",
    }
    # JAX's persistent compilation cache, as train.py set it, travels too.
    directory = jax_cache.configure()
    env = RayExecutor(num_gpus_per_run=1).task_env()
    assert env["JAX_COMPILATION_CACHE_DIR"] == directory
    assert env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] == "0"


@pytest.mark.slow
def test_no_run_fits_the_cluster(local_ray):
    executor = RayExecutor(num_gpus_per_run=1)
    with pytest.raises(ValueError, match="needs 1 CPUs and 1 GPUs; the clu"):
        executor.start()
    with pytest.raises(ValueError, match="needs 3 CPUs and 0 GPUs"):
        RayExecutor(num_cpus_per_run=3).start()


def _blocking(module):
    """Child-process code that makes `module` (and its submodules) fail to
    import, as where it is not installed."""
    return f"""
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name == "{module}" or name.startswith("{module}."):
            raise ImportError("No module named '{module}'")
sys.meta_path.insert(0, Block())
"""


_NO_RAY = (
    _blocking("ray")
    + """sys.argv = ["train.py", *sys.argv[1:]]
import runpy
runpy.run_path("train.py", run_name="__main__")
"""
)


# A JAX worker where TensorFlow is not installed runs the setup hook.
_HOOK_WITHOUT_TENSORFLOW = (
    _blocking("tensorflow")
    + """import gc
from keras_bninit.harness import ray_executor
ray_executor._worker_setup()
print(gc.isenabled(), gc.get_freeze_count() > 10000,
      "tensorflow" in sys.modules, sys.modules["keras"].backend.backend())
"""
)


def test_worker_hook_without_tensorflow_imports_and_freezes():
    result = run_python("-c", _HOOK_WITHOUT_TENSORFLOW, backend="jax")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["True", "True", "False", "jax"]


def test_executor_ray_without_ray_says_how_to_install(tmp_path):
    out = subprocess.run(
        [sys.executable, "-c", _NO_RAY, "sweep", "--gamma", "0.1",
         "--seeds", "1", "--epochs", "1", "--executor", "ray",
         "--out", str(tmp_path / "s")],
        capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=300,
    )  # fmt: skip
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().splitlines() == [
        "train.py: error: the Ray executor needs Ray, which is not "
        'installed: pip install "keras_bninit[ray]"'
    ]
    assert not (tmp_path / "s").exists()


def _disk_full(config, build_model=None):
    from keras_bninit.harness.sweep import EnvironmentFailure

    raise EnvironmentFailure(f"run {config.run_name()}: disk full")


def _bad_image(config, build_model=None):
    from keras_bninit.harness.datasets import BadDataError

    raise BadDataError(f"{config.out}/cat/1.png is not a readable image")


@pytest.mark.slow
@pytest.mark.parametrize(
    "run_fn, error, message",
    [
        (_disk_full, "EnvironmentFailure", r"run digits-tiny-.*: disk"),
        # Bad data found on a worker reaches the driver as itself, which
        # the command line turns into exit status 2.
        (_bad_image, "BadDataError", r"cat/1.png is not a readable image"),
    ],
)
def test_a_task_that_stops_the_sweep_leaves_it_unclaimed(
    local_ray, tmp_path, run_fn, error, message
):
    from keras_bninit.harness import datasets, sweep

    error = getattr(sweep, error, None) or getattr(datasets, error)
    executor = RayExecutor(workers=2, run_fn=run_fn)
    with pytest.raises(error, match=message):
        run_sweep(_runs(seeds="1"), tmp_path, quiet=True, executor=executor)
    with ResultStore(tmp_path) as store:
        assert store.claims() == {} and len(store) == 0


def _sleep(config, build_model=None):
    del build_model
    path = os.path.join(config.out, f"started-{config.run_name()}")
    with open(path, "w") as f:
        f.write(str(os.getpid()))
    time.sleep(60)


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.slow
def test_ctrl_c_cancels_tasks_and_releases_claims(local_ray, tmp_path):
    # Last in this module: the cancelled tasks' worker processes are killed.
    runs = _runs(seeds="1")
    os.makedirs(tmp_path / "runs")
    started = tmp_path / "runs"

    def press_ctrl_c():
        deadline = time.time() + 60
        while len(list(started.glob("started-*"))) < 2:
            if time.time() > deadline:
                break
            time.sleep(0.1)
        signal.raise_signal(signal.SIGINT)

    threading.Thread(target=press_ctrl_c, daemon=True).start()
    executor = RayExecutor(workers=2, run_fn=_sleep)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(runs, tmp_path, quiet=True, executor=executor)
    pids = [int(p.read_text()) for p in started.glob("started-*")]
    with ResultStore(tmp_path) as store:
        assert store.claims() == {} and len(store) == 0
    # ray.cancel(force=True) killed the tasks' worker processes.
    deadline = time.time() + 10
    while any(map(_alive, pids)) and time.time() < deadline:
        time.sleep(0.1)
    assert len(pids) == 2 and not any(map(_alive, pids))


def _train(*args):
    return run_python(TRAIN_PY, *args, env=ENV, timeout=600)


def _accuracies(sweep_dir):
    with ResultStore(sweep_dir) as store:
        return {
            (r["config"]["gamma"], r["config"]["seed"]): r["test_accuracy"]
            for r in store.records(status=None)
        }


@pytest.mark.slow
def test_cli_ray_sweep_gives_the_local_sweeps_rows(tmp_path):
    pytest.importorskip("ray")
    args = ("sweep", "--preset", "demo", "--seeds", "1", "--epochs", "1")
    local = _train(*args, "--out", str(tmp_path / "local"))
    assert local.returncode == 0, local.stderr[-3000:]
    ray = _train(*args, "--out", str(tmp_path / "ray"), "--executor", "ray",
                 "--workers", "2")  # fmt: skip
    assert ray.returncode == 0, ray.stderr[-3000:]
    expected = _accuracies(tmp_path / "local")
    assert sorted(expected) == [(0.1, 1), (1.0, 1)]
    assert _accuracies(tmp_path / "ray") == expected
    out = ray.stdout
    assert "[sweep] run 2/2 (0 done before or elsewhere, 1 running)" in out
    # Nodes named by host, IP and short Ray node id (one host name for all
    # nodes of a container cluster).
    assert re.search(
        rf"\[sweep\] ran on {re.escape(socket.gethostname())} "
        r"\([0-9a-f.:]+, node [0-9a-f]{8}\): 2 runs, ",
        out,
    ), out
    assert "[sweep] 2 runs: 0 already done, 2 ran (0 failed)" in out
    # The same report; TensorFlow's start-up notes of the workers muted.
    assert out[out.index("[sweep] 2 runs:") :] == (
        local.stdout[local.stdout.index("[sweep] 2 runs:") :].replace(
            str(tmp_path / "local"), str(tmp_path / "ray")
        )
    )
    assert "absl::InitializeLog" not in ray.stderr + out


@pytest.mark.slow
@pytest.mark.parametrize("signum, status", [(signal.SIGTERM, 143)])
def test_a_signal_to_a_ray_driver_is_one_line_and_a_rerun_finishes(
    tmp_path, signum, status
):
    """`ray.init()` replaces the driver's handlers (SIGTERM was a C++ stack
    dump and exit 134, or exit 1): they are given back, so the driver
    cancels its task, releases its claim, says so in one line and exits
    143; the same command then trains the run, once."""
    pytest.importorskip("ray")
    argv = [
        sys.executable, TRAIN_PY, "sweep", "--dataset", "digits",
        "--model", "resnet8", "--gamma", "0.1", "--no-base", "--seeds", "1",
        "--epochs", "8", "--executor", "ray", "--workers", "1",
        "--out", str(tmp_path),
    ]  # fmt: skip
    # Eight epochs: the cancelled worker must not finish the run (its last
    # epochs, test and save) before Ray kills it; with three, on a fast
    # machine, it sometimes did, and the rerun found the run done.
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env=ENV, cwd=ROOT,
    )  # fmt: skip
    lines = []
    for line in proc.stdout:  # the worker's lines come through the driver
        lines.append(line)
        if "epoch 1/8" in line:
            proc.send_signal(signum)
            break
    out = "".join(lines) + proc.communicate(timeout=300)[0]
    assert proc.returncode == status, out[-3000:]
    assert "SIGTERM received" not in out and "Traceback" not in out
    ours = [x for x in out.splitlines() if x.startswith("train.py: ")]
    assert ours[-1].startswith("train.py: terminated (SIGTERM); nothing")
    with ResultStore(tmp_path) as store:
        assert store.claims() == {} and len(store) == 0
    rerun = subprocess.run(
        argv, capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=600
    )
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "1 ran (0 failed)" in rerun.stdout
    with ResultStore(tmp_path) as store:
        assert store.claims() == {}
        assert [r["status"] for r in store.records(status=None)] == ["ok"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--workers", "2"], "--workers needs --executor ray"),
        (["--executor", "ray", "--gpus-per-run", "-1"],
         "--gpus-per-run must be a finite number >= 0. Received: -1.0"),
        (["--executor", "ray", "--cpus-per-run", "0"],
         "--cpus-per-run must be a finite number > 0. Received: 0.0"),
        (["--executor", "ray", "--workers", "0"],
         "--workers must be an integer >= 1. Received: 0"),
        (["--dry-run", "--images-per-second", "0"],
         "--images-per-second must be > 0. Received: 0"),
    ],
)  # fmt: skip
def test_cli_bad_executor_options_exit_2_writing_nothing(
    tmp_path, args, message
):
    out = tmp_path / "s"
    result = _train("sweep", "--gamma", "0.1", "--seeds", "1", "--out",
                    str(out), *args)  # fmt: skip
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("train.py") and message in line
    assert not out.exists()


def test_dry_run_prints_work_and_estimated_hours():
    result = _train(
        *("sweep", "--preset", "table1a", "--dry-run"),
        *("--images-per-second", "27600", "--workers", "4"),
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 360 + 3
    # 360 runs of 180 epochs of 45,000 images (CIFAR-10 less validation).
    assert lines[-3] == "360 runs, 64,800 epochs, 2,916,000,000 training images"
    hours = 2_916_000_000 / 27_600 / 3600  # 29.3
    assert lines[-2] == (
        f"estimated {hours:.1f} hours on one GPU at 27,600 images/s"
    )
    # 360 equal runs on 4 workers: 90 each.
    assert (
        lines[-1]
        == f"estimated {hours / 4:.1f} hours for 4 workers, one GPU each"
    )


def test_estimate_counts_images_and_schedules_runs_in_order():
    from keras_bninit.harness.data import load_dataset
    from keras_bninit.harness.presets import estimate, train_images

    assert train_images("digits") == load_dataset("digits").num_train == 1293
    assert train_images("cifar10") == 45_000
    assert train_images("/some/folder") is None
    runs = expand([{"dataset": "digits", "gamma": 0.1}], "1", epochs=3)
    long = expand([{"dataset": "digits", "gamma": 0.5}], "1", epochs=9,
                  add_base=False)  # fmt: skip
    plan = estimate(runs + long, images_per_second=1293, workers=2)
    # One second per epoch: runs of 3, 3 and 9 s; two workers: 3 | 3 + 9.
    assert plan == {
        "runs": 3,
        "epochs": 15,
        "images": 15 * 1293,
        "hours": 15 / 3600,
        "hours_workers": 12 / 3600,
    }
    assert estimate(runs)["hours"] is None
