"""A demo-sized sweep in one process: how much of its time is training.

Runs `run_sweep` on the demo's grid (digits, resnet8, BASE and c = 0.1 with
a = 100, batch 32; seeds and epochs as given) in a new temporary folder and
prints:

- wall: the sweep's seconds (data, builds, compiles, training, validation,
  checkpoints, test evaluation, saving, the store);
- training: the steady epoch time (the median of every epoch after each
  run's first) times the number of epochs trained;
- share: training / wall;
- overhead per run: (wall - training) / runs;
- where the rest goes, per phase (seconds summed over the runs), and with
  `--profile N` cProfile's top N functions by own time.

`--no-share` trains every run in a program of its own, as 0.3 did (each
run clears the session, builds and compiles): run both to compare. Which
compiled programs were built and shared is printed too.

    python benchmarks/sweep.py --backend jax --seeds 1-4
    python benchmarks/sweep.py --backend jax --seeds 1-4 --no-share
"""

import argparse
import contextlib
import cProfile
import io
import os
import pstats
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend", choices=("tensorflow", "jax", "torch"))
    parser.add_argument("--seeds", default="1-8")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--model", default="resnet8")
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--synthetic-size", type=int, default=None)
    parser.add_argument("--input", choices=("memory", "tfdata"))
    parser.add_argument("--no-share", action="store_true")
    parser.add_argument("--no-compile-cache", action="store_true")
    parser.add_argument("--no-ahead", action="store_true")
    parser.add_argument("--profile", type=int, default=0, metavar="N")
    return parser.parse_args()


class _Phases:
    """Seconds spent in named functions, patched in place."""

    def __init__(self):
        self.seconds = {}

    def wrap(self, owner, name, label):
        function = getattr(owner, name)

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - start
                self.seconds[label] = self.seconds.get(label, 0.0) + elapsed

        setattr(owner, name, timed)


def _jax_cache():
    """`keras_bninit.harness.jax_cache`, loaded without the package's
    `__init__` (which imports Keras, and JAX with it)."""
    import importlib.util

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.path.join(root, "keras_bninit", "harness", "jax_cache.py")
    spec = importlib.util.spec_from_file_location("_jax_cache", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main():
    args = _args()
    if args.backend:
        os.environ["KERAS_BACKEND"] = args.backend
    _jax_cache().configure(enabled=not args.no_compile_cache)  # before JAX
    import train  # the command line, loaded before Keras

    start_imports = time.perf_counter()
    with train._collector_paused(True):  # imported as train.py imports
        import keras

        from keras_bninit.harness import (
            checkpoints,
            experiment,
            programs,
            sweep,
        )
        from keras_bninit.harness.presets import expand
        from keras_bninit.harness.store import ResultStore
    imports = time.perf_counter() - start_imports
    fixed = {
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "model": args.model,
        "verbose": 0,
    }
    if args.input:
        fixed["input"] = args.input
    if args.synthetic_size:
        fixed["synthetic_size"] = args.synthetic_size
    runs = expand(
        [{"dataset": args.dataset, "gamma": 0.1, "gamma_lr_divisor": 100.0}],
        args.seeds,
        lr=0.1,
        **fixed,
    )
    if args.no_share:  # every run builds and compiles its own program
        programs.worker_programs = lambda: programs.ProgramCache(size=1)
    if args.no_ahead:  # no program built and traced during another's run
        programs.ProgramCache.ahead_callback = lambda *args, **kwargs: None
    phases = _Phases()
    phases.wrap(experiment, "_load_splits", "data")
    phases.wrap(programs, "build_fresh", "model builds")
    phases.wrap(programs.InitialWeights, "draw", "initial weights drawn again")
    phases.wrap(programs, "compile_program", "compile (Keras)")
    phases.wrap(programs._Program, "reset", "reset a shared program")
    phases.wrap(checkpoints.RunState, "restore", "restore")
    phases.wrap(checkpoints.RunState, "on_epoch_end", "checkpoints")
    phases.wrap(experiment, "_evaluate", "test evaluation and saving")
    phases.wrap(keras.Model, "fit", "fit (training and validation)")
    phases.wrap(keras.Model, "save", "model.keras (in test evaluation)")
    phases.wrap(experiment._io, "atomic_write_json", "JSON files")
    phases.wrap(checkpoints.RunState, "delete", "deleting the checkpoints")
    phases.wrap(ResultStore, "claim", "store: claims")
    phases.wrap(ResultStore, "finish", "store: records")
    built_by = set()  # the runs that built (traced and compiled) a program
    acquire = programs.ProgramCache.acquire

    def acquire_noting(self, config, *rest, **kwargs):
        before = self.built
        result = acquire(self, config, *rest, **kwargs)
        if self.built > before:
            built_by.add(config.run_name())
        return result

    programs.ProgramCache.acquire = acquire_noting
    profile = cProfile.Profile() if args.profile else None
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        with profile or contextlib.nullcontext():
            counts = sweep.run_sweep(runs, out, quiet=True)
        wall = time.perf_counter() - start
        with ResultStore(out) as store:
            records = store.records()
    times = [r["history"]["epoch_time_s"] for r in records]
    first = [t[0] for t in times]
    later = [x for t in times for x in t[1:]]
    steady = statistics.median(later)
    epochs = sum(len(t) for t in times)
    training = steady * epochs
    cache = programs.worker_programs() if not args.no_share else None
    print(
        f"backend {keras.backend.backend()}, {len(records)} runs "
        f"({counts['failed']} failed) x {args.epochs} epochs, "
        f"{'one program per run' if args.no_share else 'shared programs'}"
    )
    if cache is not None:
        print(
            f"programs built {cache.built} ({cache.ahead} while another "
            f"trained), runs in a built one {cache.hits}, runs in an "
            f"earlier run's model {cache.redrawn}"
        )
    print(f"imports {imports:.1f} s (not in the wall time)")
    print(
        f"first epochs: median {statistics.median(first):.2f} s, max "
        f"{max(first):.2f} s; later epochs: median {steady:.3f} s"
    )
    compiles = [
        r["history"]["epoch_time_s"][0] - steady
        for r in records
        if os.path.basename(r["run_dir"]) in built_by
    ]
    print(
        "compile seconds per program (first epoch of the run that built "
        "it - steady epoch): " + ", ".join(f"{c:.2f}" for c in compiles)
    )
    print(f"wall {wall:.1f} s")
    print(f"training {training:.1f} s ({epochs} epochs x {steady:.3f} s)")
    print(f"share {training / wall:.3f}")
    print(f"overhead per run {(wall - training) / len(records):.2f} s")
    print("phases (s, summed over runs; fit includes the first epochs):")
    for label, seconds in sorted(phases.seconds.items(), key=lambda i: -i[1]):
        print(f"  {label:32s} {seconds:7.2f}")
    if profile is not None:
        text = io.StringIO()
        stats = pstats.Stats(profile, stream=text)
        stats.sort_stats("tottime").print_stats(args.profile)
        print(text.getvalue())


if __name__ == "__main__":
    main()
