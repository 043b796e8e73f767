"""Sweeps on Ray: every run a Ray task, on one machine or a cluster.

`RayExecutor` is an executor for `keras_bninit.harness.sweep.run_sweep`:

    from keras_bninit.harness.ray_executor import RayExecutor
    from keras_bninit.harness.presets import preset_runs
    from keras_bninit.harness.sweep import run_sweep

    with RayExecutor(workers=2) as executor:  # a local Ray, 2 CPUs
        run_sweep(preset_runs("demo"), "runs/demo", executor=executor)

Each claimed run becomes one Ray task that calls
`keras_bninit.harness.sweep.execute_run` in a Ray worker process and returns
the run's record; the driver (the process that called `run_sweep`) writes
it to the store, so the SQLite store is only ever opened by the driver. A
worker process that dies (killed, out of host memory, a lost node) has its
task retried by Ray up to `max_retries` times; the retry resumes the run
from its checkpoint in the run folder. Errors raised by a run (a full disk,
a missing data set) are not retried: they stop the sweep, as on the local
executor.

Run folders: by default every Ray node sees the driver's sweep folder at
the same path (one machine, or a shared filesystem such as NFS), and runs
write there. With `ship_files=True` runs write into a folder on their own
node and the task returns the run folder's files (result.json,
config.json, epochs.json, model.keras, ...), which the driver writes into
its sweep folder.

Ray is an optional dependency: `pip install "keras_bninit[ray]"`.
"""

import contextlib
import dataclasses
import hashlib
import math
import numbers
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time

from keras_bninit.harness import _io
from keras_bninit.harness.ray_head import (
    HeadLostError,
    HeadWatch,
    give_up_after,
    ray_timeout_s,
)

RAY_INSTALL = 'pip install "keras_bninit[ray]"'

# A run that shares a GPU must not take all of its memory at start-up:
# TensorFlow grows its allocation on demand, JAX does not preallocate 75 %
# of the GPU, and PyTorch's caching allocator returns freed segments.
GPU_SHARING_ENV = {
    "TF_FORCE_GPU_ALLOW_GROWTH": "true",
    "XLA_PYTHON_CLIENT_PREALLOCATE": "false",
    "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True",
}

# The driver's settings that a worker on another node does not inherit.
_PASSED_ENV = (
    "KERAS_BACKEND",
    "TF_CPP_MIN_LOG_LEVEL",
    "TFDS_DATA_DIR",
    # JAX's persistent compilation cache (harness.jax_cache), for workers
    "KERAS_BNINIT_COMPILE_CACHE",
    "JAX_COMPILATION_CACHE_DIR",
    "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS",
)


class RayUnavailableError(ImportError):
    """Ray is not installed; the message says how to install it."""


def import_ray():
    """Imports Ray, or raises `RayUnavailableError` naming the extra."""
    try:
        import ray
    except ImportError as error:
        raise RayUnavailableError(
            f"the Ray executor needs Ray, which is not installed: {RAY_INSTALL}"
        ) from error
    return ray


def _number(name, value, minimum, allow_minimum):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"`{name}` must be a number. Received: {value!r}")
    value = float(value)
    low = value >= minimum if allow_minimum else value > minimum
    if not (math.isfinite(value) and low):
        relation = ">=" if allow_minimum else ">"
        raise ValueError(
            f"`{name}` must be a finite number {relation} {minimum:g}. "
            f"Received: {value!r}"
        )
    return value


def _count(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"`{name}` must be an integer. Received: {value!r}")
    if value < minimum:
        raise ValueError(
            f"`{name}` must be an integer >= {minimum}. Received: {value!r}"
        )
    return int(value)


def _resource(name, value, allow_zero):
    value = _number(name, value, 0.0, allow_zero)
    if value > 1 and not value.is_integer():
        raise ValueError(
            f"`{name}` above 1 must be a whole number (Ray shares only "
            f"single devices). Received: {value:g}"
        )
    return value


def _gpu_ids(ray):
    ids = ray.get_gpu_ids()
    return ",".join(str(i) for i in ids) if ids else None


def _run_folder_files(run_dir):
    """{relative path: bytes} of every file under `run_dir`."""
    files = {}
    for root, _, names in os.walk(run_dir):
        for name in names:
            path = os.path.join(root, name)
            rel = os.path.relpath(path, run_dir).replace(os.sep, "/")
            with open(path, "rb") as f:
                files[rel] = f.read()
    return files


def _node_out(driver_out):
    """This node's folder for the runs of the sweep at `driver_out`."""
    digest = hashlib.sha1(os.path.abspath(driver_out).encode()).hexdigest()
    return os.path.join(
        tempfile.gettempdir(), "keras_bninit-ray", digest[:16], "runs"
    )


def _worker_setup():
    """Imports the harness in a new worker, TensorFlow's notes muted.

    TensorFlow writes its C++ start-up notes (oneDNN, no CUDA driver)
    straight to file descriptor 2; with TF_CPP_MIN_LOG_LEVEL >= 2 (as
    train.py sets it) they would fill the driver's console once per worker.
    Warnings take one line, as in train.py (Ray prefixes the worker). As
    train.py does, the garbage collector is off during the imports and
    what they made is then frozen out of later collections (a worker
    lives as long as the sweep). TensorFlow is imported only where it is
    installed: a JAX or PyTorch worker may have none.
    """
    import gc
    import warnings

    warnings.formatwarning = lambda message, *_, **__: f"warning: {message}\n"
    mute = os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0") >= "2"
    saved = os.dup(2) if mute else None
    devnull = os.open(os.devnull, os.O_WRONLY) if mute else None
    gc.disable()
    try:
        if mute:
            os.dup2(devnull, 2)
        import keras_bninit.harness.sweep  # noqa: F401  (imports Keras)
        from keras_bninit.harness import _tf

        if _tf.available():
            import tensorflow as tf

            tf.config.list_physical_devices()  # its notes, muted
    finally:
        if mute:
            os.dup2(saved, 2)
            os.close(saved)
            os.close(devnull)
        gc.freeze()
        gc.enable()


# Ray would import a hook named by its module before calling it, and
# importing any module of keras_bninit imports Keras, and so TensorFlow's
# notes, first: the hook travels by value instead (cloudpickle copies
# functions of __main__).
_worker_setup.__module__ = "__main__"


def _execute(config, build_model, ship_files, run_fn):
    """The Ray task: one run in a worker; returns (record, where, files)."""
    import ray

    start = time.perf_counter()
    if run_fn is None:
        from keras_bninit.harness.sweep import execute_run as run_fn
    driver_out = config.out
    if ship_files:
        config = dataclasses.replace(config, out=_node_out(driver_out))
    record = run_fn(config, build_model=build_model)
    files = None
    if ship_files:
        run_dir = os.path.join(config.out, config.run_name())
        files = _run_folder_files(run_dir)
        shutil.rmtree(run_dir, ignore_errors=True)  # the driver has them now
        for folder in (config.out, os.path.dirname(config.out)):
            try:
                os.rmdir(folder)  # only when no other run uses it
            except OSError:
                break
    where = {
        "node": _node_name(ray),
        "gpu": _gpu_ids(ray),
        "seconds": time.perf_counter() - start,
    }
    return record, where, files


def _node_name(ray):
    """The host name with the node's IP and short Ray node id: nodes of one
    host name (containers, a simulated cluster) are told apart."""
    name = socket.gethostname()
    try:
        ip = ray.util.get_node_ip_address()
        node = ray.get_runtime_context().get_node_id()[:8]
    except Exception:  # noqa: BLE001 - the name alone is still right
        return name
    return f"{name} ({ip}, node {node})"


class RayExecutor:
    """Runs a sweep's runs as Ray tasks (see the module docstring).

    Args:
        address: None starts a local Ray on this machine (stopped when the
            sweep ends); "auto" or "HOST:PORT" connects to a running Ray
            cluster (`ray start --head` on its head node).
        num_cpus_per_run: CPUs Ray reserves for each run (default 1).
        num_gpus_per_run: GPUs Ray reserves for each run (default 0: the run
            sees no GPU). A fraction such as 0.5 lets runs share a GPU;
            such runs allocate GPU memory on demand (`GPU_SHARING_ENV`).
            Sharing a GPU gives no more images per second in total, only
            more runs in memory at once.
        workers: how many runs are in flight at once; None: as many as the
            cluster's resources hold. With `address=None` the local Ray gets
            `workers * num_cpus_per_run` CPUs (None: all of this machine's).
        max_retries: how often Ray retries a run whose worker process died.
        ship_files: runs write to a folder on their own node and the driver
            receives the run folders' files (no shared filesystem); default:
            runs write directly into the sweep folder.
        build_model: the model builder for `execute_run` (None: the model
            zoo); `run_sweep` sets it from its own `build_model` when None.
        run_fn: what a task calls, `callable(config, build_model=...) ->
            record` (None: `keras_bninit.harness.sweep.execute_run`).

    Raises:
        ValueError: a bad option, naming it (before Ray is started).
    """

    def __init__(
        self,
        address=None,
        num_cpus_per_run=1,
        num_gpus_per_run=0,
        workers=None,
        max_retries=3,
        ship_files=None,
        build_model=None,
        run_fn=None,
    ):
        if address is not None and (
            not isinstance(address, str) or not address.strip()
        ):
            raise ValueError(
                "`address` must be None (start a local Ray), 'auto' or "
                f"'HOST:PORT' of a running Ray cluster. Received: {address!r}"
            )
        self.address = address
        self.num_cpus_per_run = _resource(
            "num_cpus_per_run", num_cpus_per_run, allow_zero=False
        )
        self.num_gpus_per_run = _resource(
            "num_gpus_per_run", num_gpus_per_run, allow_zero=True
        )
        self.workers = (
            None if workers is None else _count("workers", workers, 1)
        )
        self.max_retries = _count("max_retries", max_retries, 0)
        self.ship_files = bool(ship_files)
        self.build_model = build_model
        self.run_fn = run_fn
        self.slots = None  # runs in flight at once, known once Ray is up
        self._ray = None
        self._owns_ray = False
        self._task = None
        self._watch = None  # the head node's, while Ray is up
        # Ray's bound on the wait for a lost head, and ours, just before.
        self._give_up_s = give_up_after(ray_timeout_s())

    # -- Ray ----------------------------------------------------------------

    def task_env(self):
        """Environment variables set in every task's worker process."""
        env = {k: os.environ[k] for k in _PASSED_ENV if k in os.environ}
        if self.num_gpus_per_run == 0:
            # Ray leaves CUDA_VISIBLE_DEVICES alone for tasks that ask for
            # no GPU: unset, every such run would take every GPU's memory.
            env["CUDA_VISIBLE_DEVICES"] = ""
        elif self.num_gpus_per_run < 1:
            env.update(GPU_SHARING_ENV)
        return env

    def start(self):
        """Starts or connects to Ray and checks that a run fits; idempotent.

        Raises:
            RayUnavailableError: Ray is not installed.
            ValueError: no node of the cluster can hold one run's CPUs and
                GPUs.
            ConnectionError: no Ray cluster at `address`.
        """
        if self._ray is not None:
            return self._ray
        ray = import_ray()
        if not sys.stdout.isatty():  # no colour codes in a log file
            os.environ.setdefault("RAY_COLOR_PREFIX", "0")
        if not ray.is_initialized():
            import logging

            options = {
                "include_dashboard": False,
                "logging_level": logging.ERROR,
                "log_to_driver": True,
                # Merged into every task's runtime environment.
                "runtime_env": {"worker_process_setup_hook": _worker_setup},
            }
            with _own_signal_handlers():
                if self.address is None:
                    cpus = os.cpu_count() or 1
                    if self.workers is not None:
                        cpus = math.ceil(self.workers * self.num_cpus_per_run)
                    ray.init(num_cpus=cpus, **options)
                else:
                    ray.init(address=self.address, **options)
            self._owns_ray = True
        try:
            self.slots = self._slots(ray)
        except BaseException:
            self.close()
            raise
        self._watch = HeadWatch(ray.get_runtime_context().gcs_address)
        self._watch.start()
        # A worker process runs task after task (Ray's default for GPU
        # tasks is one each): it keeps its compiled programs and data
        # (harness.programs), so runs after its first skip the compile.
        self._task = ray.remote(max_calls=0)(_execute)
        self._ray = ray
        return ray

    def _slots(self, ray):
        total = ray.cluster_resources()
        fits = total.get("CPU", 0.0) // self.num_cpus_per_run
        if self.num_gpus_per_run:
            fits = min(fits, total.get("GPU", 0.0) // self.num_gpus_per_run)
        if fits < 1:
            raise ValueError(
                f"No run fits the Ray cluster: a run needs "
                f"{self.num_cpus_per_run:g} CPUs and "
                f"{self.num_gpus_per_run:g} GPUs; the cluster has "
                f"{total.get('CPU', 0.0):g} CPUs and "
                f"{total.get('GPU', 0.0):g} GPUs"
            )
        return int(fits) if self.workers is None else self.workers

    def close(self):
        """Stops the local Ray this executor started (or disconnects)."""
        if self._watch is not None:
            self._watch.stop()
            self._watch = None
        if self._owns_ray:
            import ray

            ray.shutdown()
        self._owns_ray = False
        self._ray = self._task = None

    # -- the executor -------------------------------------------------------

    def _submit(self, config):
        if config.verbose == 1:
            # A progress bar cannot be drawn through Ray's log forwarding:
            # a line per epoch instead.
            config = dataclasses.replace(config, verbose=2)
        return self._task.options(
            num_cpus=self.num_cpus_per_run,
            num_gpus=self.num_gpus_per_run,
            max_retries=self.max_retries,
            retry_exceptions=False,
            runtime_env={"env_vars": self.task_env()},
        ).remote(config, self.build_model, self.ship_files, self.run_fn)

    def _write_shipped(self, config, record, files):
        """Writes a shipped run folder into the driver's sweep folder."""
        run_dir = os.path.join(config.out, config.run_name())
        os.makedirs(run_dir, exist_ok=True)
        record = {
            **record,
            "run_dir": os.path.abspath(run_dir),
            "config": {**record["config"], "out": config.out},
        }
        for rel, data in sorted(files.items()):
            path = os.path.join(run_dir, *rel.split("/"))
            if rel == "result.json":
                continue  # written last, below, with this folder's paths
            if rel == "config.json":
                _io.atomic_write_json(path, record["config"])
                continue
            os.makedirs(os.path.dirname(path), exist_ok=True)
            partial = f"{path}.partial"
            with open(partial, "wb") as f:
                f.write(data)
            os.replace(partial, path)
        if "result.json" in files:
            _io.atomic_write_json(os.path.join(run_dir, "result.json"), record)
        return record

    def run(self, claim_next, on_record):
        """Runs claimed runs as Ray tasks until `claim_next()` gives None.

        Args:
            claim_next: `callable() -> RunConfig or None`; called whenever
                a slot is free.
            on_record: `callable(config, record, where)`, called in this
                process for each finished run; `where` is {"node", "gpu",
                "seconds"}.

        Raises:
            Whatever a run raised (environment errors), or Ray's
            `WorkerCrashedError` once a run's retries are used up; Ctrl-C
            (KeyboardInterrupt). In-flight tasks are cancelled first.
        """
        ray = self.start()
        pending = {}
        try:
            exhausted = False
            while True:
                while not exhausted and len(pending) < self.slots:
                    config = claim_next()
                    if config is None:
                        exhausted = True
                    else:
                        pending[self._submit(config)] = config
                if not pending:
                    return
                # A timeout keeps Ctrl-C responsive while runs train.
                done, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
                self._watch.check(self._give_up_s)  # HeadLostError
                for ref in done:
                    config = pending.pop(ref)
                    try:
                        record, where, files = ray.get(ref)
                    except ray.exceptions.RayTaskError as error:
                        # The run's own exception (EnvironmentFailure, ...),
                        # with the worker's traceback chained.
                        raise error.cause from error
                    if files is not None:
                        record = self._write_shipped(config, record, files)
                    on_record(config, record, where)
        except HeadLostError:
            raise  # its tasks cannot be reached to cancel
        except BaseException:
            for ref in pending:
                try:
                    ray.cancel(ref, force=True)
                except Exception:  # noqa: BLE001 - Ray itself is going down
                    pass
            raise

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


@contextlib.contextmanager
def _own_signal_handlers():
    """Gives SIGINT and SIGTERM their handlers back after `ray.init()`.

    `ray.init()` installs its own: SIGTERM then becomes a C++ stack dump
    and an abort (exit 134) or a `SystemExit(1)` inside `ray.wait`, never
    the caller's handler (the command line's "terminated", exit 143, after
    the tasks are cancelled and the claims released). Signal handlers are
    the main thread's; elsewhere this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in saved.items():
            if handler is not None:  # None: not installed from Python
                signal.signal(signum, handler)
