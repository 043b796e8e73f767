"""keras_bninit command line: one run, multi-seed sweeps, reports, plots.

`keras-bninit` when installed, `python train.py` in a checkout:

    keras-bninit                       # no arguments: the offline demo
                                       # (sweep --preset demo, runs/demo)
    keras-bninit run --dataset digits --model resnet8 --epochs 3
    keras-bninit sweep --preset table1a --dry-run
    keras-bninit report runs/demo
    keras-bninit plot RUN_DIR          # diagnostics plots of a run

Every argument is checked before anything is written; a bad one prints one
error line and exits with status 2. This module only parses arguments: the
work is done by keras_bninit.harness.experiment / sweep / report.

Keras fixes its backend when it is imported, and `keras_bninit`'s
`__init__` imports Keras, so the two entry points (train.py,
bin/keras-bninit) load this file by path without the package: parsing,
`--help` and `--backend` come first.
Until Keras loads, this module imports only the standard library and the
backend-free modules `keras_bninit.harness.config` / `presets`.
"""

import contextlib
import os
import signal
import sys
import threading
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

DEMO_DIR = os.path.join("runs", "demo")

# The command's name in messages: "train.py" in a checkout, "keras-bninit"
# installed (`main(prog=...)`).
PROG = "train.py"


def _warning_line(message, category, filename, lineno, line=None):
    return f"{PROG}: warning: {message}\n"


def _fail(message):
    sys.stderr.write(f"{PROG}: error: {message}\n")
    sys.exit(2)


# ============================================================================
# Arguments
# ============================================================================


def _light_module(name):
    """A module of keras_bninit that imports no backend, loaded without the
    package's `__init__` (which imports Keras) when Keras is not loaded yet:
    the backend is chosen after parsing, and --help answers before Keras
    loads. Registered under its own name, so later imports share it."""
    import importlib
    import importlib.util

    if name in sys.modules or "keras_bninit" in sys.modules:
        return importlib.import_module(name)
    root = importlib.util.find_spec("keras_bninit").submodule_search_locations
    path = os.path.join(root[0], *name.split(".")[1:]) + ".py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


_process = _light_module("keras_bninit.harness.cli_process")
_import_quietly = _process.import_quietly
_collector_paused = _process.collector_paused


def _config():
    """`keras_bninit.harness.config`, before Keras loads."""
    _light_module("keras_bninit._validation")
    _light_module("keras_bninit.harness.bounds")
    _light_module("keras_bninit.harness.constants")
    return _light_module("keras_bninit.harness.config")


def _presets():
    """`keras_bninit.harness.presets`, before Keras loads."""
    _config()
    return _light_module("keras_bninit.harness.presets")


def _config_fields(args, grid):
    """The RunConfig fields given on the command line: the grid's (`grid`
    True) or the others (with --keras-semantics's)."""
    config = _config()
    names = [
        f.name
        for f in config.fields(grid=grid)
        if f.metadata["cli"] is not False
    ]
    fields = {n: getattr(args, n) for n in names}
    fields = {k: v for k, v in fields.items() if v is not None}
    if not grid:
        if args.keras_semantics:
            fields = {**config.KERAS_SEMANTICS, **fields}
        if args.quiet:
            fields["verbose"] = 0
        elif "verbose" not in fields:  # plain lines into a log file
            fields["verbose"] = 1 if sys.stdout.isatty() else 2
    return fields


def _set_backend(args):
    """Sets KERAS_BACKEND from --backend before Keras loads (Keras fixes
    its backend at import); --export needs TensorFlow."""
    backend = getattr(args, "backend", None)
    if backend is None:
        backend = os.environ.get("KERAS_BACKEND") or _installed_backend()
        os.environ["KERAS_BACKEND"] = backend
    elif "keras" in sys.modules:  # main() called in a process with Keras
        loaded = sys.modules["keras"].backend.backend()
        if loaded != backend:
            _fail(
                f"--backend {backend}: Keras is already loaded in this "
                f"process with the {loaded} backend"
            )
    else:
        os.environ["KERAS_BACKEND"] = backend
    _light_module("keras_bninit.harness.jax_cache").configure(
        enabled=not getattr(args, "no_compile_cache", False)
    )
    if getattr(args, "export", False) and backend != "tensorflow":
        _fail(
            f"--export writes a SavedModel, which needs --backend "
            f"tensorflow (backend: {backend}); model.keras loads everywhere"
        )


def _installed_backend():
    """Keras's default, TensorFlow, where installed; else JAX or PyTorch."""
    check = _precheck_module()
    for backend, module in check.BACKEND_MODULES.items():
        if check.installed(module):
            return backend
    return "tensorflow"  # the precheck then names its install


def _precheck_module():
    """`harness.precheck`, before Keras loads."""
    _presets()
    _light_module("keras_bninit.harness._tf")
    return _light_module("keras_bninit.harness.precheck")


def _cli_parser():
    """`harness.cli_parser` (the options), before Keras loads."""
    _precheck_module()
    return _light_module("keras_bninit.harness.cli_parser")


def _parser():
    return _cli_parser().build_parser(PROG, __doc__.split("\n\n")[0], DEMO_DIR)


# ============================================================================
# Commands
# ============================================================================


def _checked(function, *args):
    """Runs a validation step; a bad value becomes one line and status 2
    (a data set that is not here too, once `datasets` is loaded: this
    runs before Keras loads as well)."""
    try:
        return function(*args)
    except ValueError as error:
        _fail(str(error).replace("\n", " "))
    except Exception as error:
        datasets = sys.modules.get("keras_bninit.harness.datasets")
        if datasets is None or not isinstance(
            error, datasets.DatasetUnavailableError
        ):
            raise
        _fail(str(error).replace("\n", " "))


# Exit statuses: 0 done, 1 a run failed or the environment stopped the
# work (disk full or read-only, data unavailable, out of memory; nothing
# stored, rerun to resume), 2 bad arguments, 130 interrupted (Ctrl-C),
# 143 terminated (SIGTERM, as batch schedulers send).
EXIT_ENVIRONMENT = 1
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread and handled like Ctrl-C: the
    epoch stops, nothing half-written is committed, claims are released
    (and Ray tasks cancelled)."""


# Set by the SIGTERM handler: Ray's `ray.wait` turns any exception a
# signal handler raises into a plain KeyboardInterrupt.
_SIGTERM_RECEIVED = threading.Event()


def _on_sigterm(signum, frame):
    _SIGTERM_RECEIVED.set()
    raise _Terminated()


def _guarded(function, *args, **kwargs):
    """Runs training; an environment error or Ctrl-C is one line."""
    import sqlite3

    from keras_bninit.harness.bounds import BadInputError
    from keras_bninit.harness.sweep import (
        ENVIRONMENT_ERRORS,
        OUT_OF_MEMORY_HINT,
        EnvironmentFailure,
        out_of_memory,
    )

    try:
        return function(*args, **kwargs)
    except BadInputError as error:  # found with the data, nothing written
        _fail(str(error).replace("\n", " "))
    except Exception as error:
        environment = (
            EnvironmentFailure,
            *ENVIRONMENT_ERRORS,
            sqlite3.OperationalError,  # the store's disk is full or failing
        )
        memory = out_of_memory(error)
        if not (isinstance(error, environment) or memory):
            raise
        message = str(error).replace("\n", " ")
        if memory and not isinstance(error, EnvironmentFailure):
            message = f"{OUT_OF_MEMORY_HINT} ({type(error).__name__})"
        elif not isinstance(error, EnvironmentFailure):
            message = f"{type(error).__name__}: {message}"
        sys.stderr.write(
            f"{PROG}: stopped by the environment: {message}; rerun the "
            "same command to resume\n"
        )
        sys.exit(EXIT_ENVIRONMENT)


def _check_store(sweep_dir):
    """A damaged or foreign results.sqlite: one line, status 2."""
    from keras_bninit.harness.store import STORE_FILENAME, ResultStore

    if os.path.exists(os.path.join(sweep_dir, STORE_FILENAME)):
        from keras_bninit.harness.sweep import check_backend

        with ResultStore(sweep_dir) as store:  # StoreError: a ValueError
            check_backend(store, sweep_dir)  # runs of another backend


def _check_sweep_folder(sweep_dir, runs):
    from keras_bninit.harness.sweep import check_sweep_folder

    check_sweep_folder(sweep_dir, runs)


def _check_row_key(row_key):

    fields = _config().field_names()
    if row_key is not None and row_key not in fields:
        raise ValueError(
            f"Unknown --row-key {row_key!r}; valid: the configuration "
            f"fields {', '.join(fields)}"
        )


def _args_config(args):
    """The run's resolved `RunConfig` from the arguments (no Keras)."""
    config = _config()
    fields = {**_config_fields(args, grid=True), **_config_fields(args, False)}
    fields.update(seed=args.seed, out=args.out)
    fields.update(export=args.export, diagnostics=args.diagnostics)
    run = config.RunConfig.from_dict(fields)
    if args.ablation is not None:
        run = config.apply_ablation(run, args.ablation)
    return run.resolved()


def _precheck(args):
    """The arguments' common mistakes, answered before Keras loads
    (`harness.precheck`); the full checks follow once it has."""
    check = _precheck_module()
    backend = os.environ["KERAS_BACKEND"]
    check.check_backend_installed(backend)
    if args.command == "run":
        check.check_run(_args_config(args), backend)
    elif args.command == "sweep":
        _check_row_key(args.row_key)
        runs = _sweep_runs(args)[0]
        check.check_runs(runs, backend)
        _sequential_looks(args, runs)
        executors = _light_module("keras_bninit.harness.cli_executor")
        executors.check_executor_args(args, ray=False)
    elif args.command == "report":
        _check_row_key(args.row_key)
        _check_has_store(args.sweep_dir)
    elif not os.path.isdir(args.run_dir):
        raise ValueError(f"{args.run_dir!r} is not a run directory")


def _check_has_store(sweep_dir):
    _config()
    _light_module("keras_bninit.harness.store_checks")
    store = _light_module("keras_bninit.harness.store").STORE_FILENAME
    if not os.path.isfile(os.path.join(sweep_dir, store)):
        _fail(f"{sweep_dir!r} holds no sweep results ({store})")


def _run_config(args):
    from keras_bninit.harness.experiment import validate

    config = _args_config(args)
    validate(config)  # every field, and what this machine has
    _check_models([config])
    _check_data([config])
    return config


def _run(args):
    from keras_bninit.harness.experiment import run_experiment

    config = _checked(_run_config, args)
    record = _guarded(run_experiment, config, build_model=_build_model())
    if record["status"] != "ok":
        print(f"run failed: {record['reason']} ({record['run_dir']})")
        return 1
    if not args.quiet:
        print(
            f"val accuracy {record['val_accuracy']:.4f} (best epoch "
            f"{record['best_epoch']}), test accuracy "
            f"{record['test_accuracy']:.4f}, {record['images_per_s']:.0f} "
            f"img/s, {record['wall_time_s']:.1f} s\nresults in "
            f"{record['run_dir']}"
        )
    return 0


def _sweep_runs(args):
    from keras_bninit.harness.presets import PRESETS, expand, preset_runs

    grid = _config_fields(args, grid=True)
    fixed = _config_fields(args, grid=False)
    if args.seeds is not None and not args.seeds.strip():
        _fail("--seeds is empty; give e.g. 1-15 or 1,2,5 or 1-3,7")
    if args.preset is not None:
        if grid:
            _fail(
                f"--preset {args.preset} fixes the grid; do not also give "
                f"{', '.join('--' + f.replace('_', '-') for f in grid)}"
            )
        if args.no_base or args.ablation:
            _fail("--no-base and --ablation cannot be used with a preset")
        runs = preset_runs(args.preset, seeds=args.seeds, **fixed)
        return runs, PRESETS[args.preset].row_key, args.preset
    if not grid:
        _fail("give --preset NAME or grid values such as --gamma 0.1 0.5")
    runs = expand(
        [grid],
        args.seeds or "1-15",
        add_base=not args.no_base,
        ablation=args.ablation,
        **fixed,
    )
    return runs, "gamma", "grid"


def _sequential_looks(args, runs):
    """--sequential's looks, checked against the seeds (no Keras); None
    without --sequential."""
    if not args.sequential:
        if args.looks is not None:
            raise ValueError("--looks needs --sequential")
        return None
    if args.no_base:
        raise ValueError(
            "--sequential tests every configuration against its BASE; drop "
            "--no-base"
        )
    sequential = _light_module("keras_bninit.harness.sequential")
    looks = args.looks or ",".join(map(str, sequential.LOOKS))
    return sequential.parse_looks(looks, len({r.seed for r in runs}))


def _sequential_plan(args, runs):
    """The sweep's `sequential_sweep.Plan`, or None (the fixed design)."""
    looks = _checked(_sequential_looks, args, runs)
    if looks is None:
        return None
    from keras_bninit.harness import sequential, sequential_sweep

    return sequential_sweep.Plan(
        sequential.Design(looks), [r.seed for r in runs]
    )


def _sweep(args):
    from keras_bninit.harness import cli_executor, sequential_sweep
    from keras_bninit.harness.experiment import check_output_dir
    from keras_bninit.harness.sweep import run_sweep

    _checked(_check_row_key, args.row_key)
    runs, row_key, name = _checked(_sweep_runs, args)
    row_key = args.row_key or row_key
    _check_models(runs)
    _checked(cli_executor.check_executor_args, args)
    plan = _sequential_plan(args, runs)
    if args.dry_run:
        for config in runs:
            print(config.run_name())
        cli_executor.print_estimate(runs, args.images_per_second, args.workers)
        if plan is not None:
            print("\n".join(sequential_sweep.dry_run_lines(runs, plan)))
        return 0
    sweep_dir = args.out or os.path.join("runs", f"sweep-{name}")
    if os.path.exists(sweep_dir) and not os.path.isdir(sweep_dir):
        _fail(f"the output path {sweep_dir!r} is a file; give a directory")
    _checked(check_output_dir, sweep_dir)
    _checked(_check_store, sweep_dir)
    _checked(_check_sweep_folder, sweep_dir, runs)
    _checked(sequential_sweep.check_design, sweep_dir, plan, runs)
    _checked(_check_data, runs)
    # Ray started and checked, nothing written.
    executor = _checked(cli_executor.executor, args)
    with executor or contextlib.nullcontext():
        counts = _guarded(
            run_sweep,
            runs,
            sweep_dir,
            retry_failed=args.retry_failed,
            quiet=args.quiet,
            build_model=_build_model(),
            row_key=row_key,
            executor=executor,
            sequential=plan,
        )
    if not args.quiet:
        stopped = ""
        if plan is not None:
            saved = counts["planned"] - counts["total"]
            stopped = f"; {saved} of {counts['planned']} not needed (stopped)"
        print(
            f"[sweep] {counts['total']} runs: {counts['skipped']} already "
            f"done, {counts['ran']} ran ({counts['failed']} failed){stopped}"
        )
    return _checked(_report_dir, sweep_dir, row_key, "raw", args.quiet)


def _report_dir(sweep_dir, row_key, decision, quiet=False):
    from keras_bninit.harness import report, report_inputs, sequential_sweep
    from keras_bninit.harness.store import STORE_FILENAME

    _check_has_store(sweep_dir)
    path = os.path.join(sweep_dir, STORE_FILENAME)
    row_key = row_key or report_inputs.sweep_row_key(sweep_dir)
    # Read only, bad rows and values named; a locked store: status 1.
    records = _guarded(report_inputs.load, path)
    if not any(r.get("status", "ok") == "ok" for r in records):
        _fail(f"{sweep_dir!r} has no completed runs yet")
    text, paths = report.write_report(  # nothing written before it checks
        records,
        os.path.join(sweep_dir, "report"),
        row_key=row_key,
        decision=decision,
        sequential=sequential_sweep.read_plan(sweep_dir),
    )
    if not quiet:
        print(text)
        files = [paths[k] for k in ("markdown", "latex", "csv")]
        files += [paths["sequential_csv"]] if "sequential_csv" in paths else []
        print(f"report: {', '.join(files)}")
        for plot in paths["plots"]:
            print(f"plot: {plot}")
    return 0


def _plot(args):
    from keras_bninit.harness.diagnostic_plots import plot_run

    run_dir = args.run_dir
    diagnostics = os.path.join(run_dir, "diagnostics")
    if os.path.isdir(diagnostics):
        run_dir = diagnostics
    if not os.path.isdir(run_dir):
        _fail(f"{args.run_dir!r} is not a run directory")
    paths = plot_run(run_dir)
    if not paths:
        _fail(
            f"{args.run_dir!r} has no diagnostics; train it with "
            f"`{PROG} run ... --diagnostics`"
        )
    for path in paths:
        print(path)
    return 0


def _build_model():
    from keras_bninit import models

    return models.build


def _check_models(configs):
    from keras_bninit import models

    names = models.available()
    for config in configs:
        if config.model not in names:
            _fail(f"unknown model {config.model!r}; valid: {', '.join(names)}")


def _check_data(configs):
    from keras_bninit.harness.datasets import ensure_available

    for dataset, data_dir in sorted(
        {(c.dataset, c.data_dir or "") for c in configs}
    ):
        ensure_available(dataset, data_dir or None)


def main(argv=None, prog=None, own_process=False):
    """Runs the command line on `argv` (default `sys.argv[1:]`); returns
    the exit status. `prog` names the command in messages.

    `own_process=True` (`train.py`, `keras-bninit`: the process ends with
    the command) keeps the garbage collector off during the imports and
    then moves every object they made (TensorFlow's are about 470,000)
    out of its sweeps (`gc.freeze`): the collections during the command
    and the one at exit skip them. That saves about a second on the
    imports and another at exit. Not for a caller that goes on (tests):
    whatever is frozen is never collected.
    """
    global PROG
    PROG = prog or PROG
    argv = sys.argv[1:] if argv is None else argv
    if not argv:  # the embedded default: a small real sweep, offline
        argv = ["sweep", "--preset", "demo", "--out", DEMO_DIR]
    # Parsing (and --help) comes before TensorFlow and Keras load.
    args = _parser().parse_args(argv)
    if args.command is None:
        _fail("choose a command: run, sweep, report or plot")
    _set_backend(args)
    _checked(_precheck, args)  # before Keras loads: within a second
    warnings.formatwarning = _warning_line
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        with _collector_paused(own_process):
            _import_quietly()
        if args.command == "run":
            return _run(args)
        if args.command == "sweep":
            return _sweep(args)
        if args.command == "report":
            _checked(_check_row_key, args.row_key)
            return _checked(
                _report_dir, args.sweep_dir, args.row_key, args.decision
            )
        return _checked(_plot, args)
    except KeyboardInterrupt as error:  # Ctrl-C, or SIGTERM (_Terminated)
        terminated = isinstance(error, _Terminated)
        terminated = terminated or _SIGTERM_RECEIVED.is_set()
        what = "terminated (SIGTERM)" if terminated else "interrupted"
        sys.stderr.write(
            f"{PROG}: {what}; nothing half-done is stored, rerun the "
            "same command to resume\n"
        )
        sys.exit(EXIT_TERMINATED if terminated else EXIT_INTERRUPTED)


if __name__ == "__main__":  # bin/keras-bninit
    sys.exit(main(prog="keras-bninit", own_process=True))
