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

import argparse
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

BACKENDS = ("tensorflow", "jax", "torch")
EXECUTORS = ("local", "ray")


class _Formatter(
    argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter
):
    """Shows "(default: ...)" where argparse holds a real default.

    Options whose default depends on others (the data set's model, epochs,
    ...) default to None so that a sweep can tell them apart; their help
    text states the default in words.
    """

    def _get_help_string(self, action):
        if action.default in (None, False) or action.const is not None:
            return action.help
        return super()._get_help_string(action)


def _warning_line(message, category, filename, lineno, line=None):
    return f"{PROG}: warning: {message}\n"


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        # One line, status 2, no usage dump and no traceback.
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        sys.exit(2)


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


def _config():
    """`keras_bninit.harness.config`, before Keras loads."""
    _light_module("keras_bninit._validation")
    _light_module("keras_bninit.harness.bounds")
    return _light_module("keras_bninit.harness.config")


def _presets():
    """`keras_bninit.harness.presets`, before Keras loads."""
    _config()
    return _light_module("keras_bninit.harness.presets")


def _field_argument(field, many):
    """The flags and argparse settings of one RunConfig field, from its
    metadata (`harness.config`): help, choices, type."""
    meta = field.metadata
    settings = dict(meta["cli"] or {})
    flags = settings.pop("flags", ("--" + field.name.replace("_", "-"),))
    settings.update(dest=field.name, help=meta["help"])
    if "action" not in settings:
        if field.default is False:
            settings.update(action="store_true", default=None)
        else:
            kinds = getattr(field.type, "__args__", (field.type,))
            settings["type"] = next(t for t in kinds if t is not type(None))
            if many and meta["grid"]:
                settings["nargs"] = "+"
    if meta["choices"] is not None:
        settings["choices"] = meta["choices"]
        if not all(str(c) in meta["help"] for c in meta["choices"]):
            settings["help"] += f" ({', '.join(map(str, meta['choices']))})"
    if (
        field.default not in (None, False)
        and "action" not in settings
        and "(default:" not in settings["help"]
    ):
        settings["help"] += f" (default: {field.default})"
    return flags, settings


def _add_run_config_args(parser, many):
    """The RunConfig fields; `many` lets grid fields take several values."""
    config = _config()
    grid = parser.add_argument_group(
        "configuration" + (" (each takes one or more values)" if many else "")
    )
    other = parser.add_argument_group("training")
    for field in config.fields():
        if field.metadata["cli"] is not False:
            flags, settings = _field_argument(field, many)
            group = grid if field.metadata["grid"] else other
            group.add_argument(*flags, **settings)
    keras_forms = " ".join(
        f"--{k.replace('_', '-')} {v}"
        for k, v in config.KERAS_SEMANTICS.items()
    )
    other.add_argument(
        "--keras-semantics",
        action="store_true",
        help="Keras's forms instead of the reference's PyTorch ones "
        f"({keras_forms}; docs/method.md)",
    )
    other.add_argument(
        "--quiet",
        action="store_true",
        help="print nothing (Keras's verbose 0 and no summary lines)",
    )
    # 0.2's option: PyTorch's SGD form, now the default.
    other.add_argument(
        "--torch-parity",
        dest="sgd",
        action="store_const",
        const="torch",
        help=argparse.SUPPRESS,
    )


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


def _add_executor_args(sweep):
    """Where a sweep's runs train: this process, or Ray tasks."""
    where = sweep.add_argument_group("executor (where the runs train)")
    where.add_argument(
        "--executor",
        choices=EXECUTORS,
        default="local",
        help="local: one run after another in this process; ray: every run "
        'a Ray task (pip install "keras_bninit[ray]")',
    )
    where.add_argument(
        "--ray-address",
        metavar="ADDRESS",
        help="auto or HOST:PORT of a running Ray cluster (default: start a "
        "local Ray)",
    )
    where.add_argument(
        "--cpus-per-run",
        type=float,
        metavar="N",
        help="CPUs Ray reserves for each run (default: 1)",
    )
    where.add_argument(
        "--gpus-per-run",
        type=float,
        metavar="N",
        help="GPUs Ray reserves for each run; a fraction such as 0.5 shares "
        "a GPU (memory only, no speed-up) (default: 0, the run sees no GPU)",
    )
    where.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="runs training at once (default: as many as the Ray cluster "
        "holds; a local Ray gets N x cpus-per-run CPUs); with --dry-run: "
        "the estimate for N workers",
    )
    where.add_argument(
        "--ship-files",
        action="store_true",
        help="for Ray nodes without a shared filesystem: runs write on "
        "their node and their files come back into the sweep directory",
    )
    where.add_argument(
        "--images-per-second",
        type=float,
        metavar="X",
        help="with --dry-run: one GPU's measured training throughput, for "
        "estimated hours: the harness's end-to-end figure (img/s of "
        "benchmarks/harness.py, or a run's images_per_s)",
    )


def _add_backend_arg(parser):
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        metavar="NAME",
        help="Keras backend: tensorflow, jax or torch (default: "
        "KERAS_BACKEND, else tensorflow where installed, else jax, else "
        "torch)",
    )
    parser.add_argument(
        "--no-compile-cache",
        action="store_true",
        help="on JAX, do not use JAX's persistent compilation cache (on by "
        "default, in JAX_COMPILATION_CACHE_DIR, else "
        "~/.cache/keras_bninit/jax)",
    )


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
    import importlib.util

    for backend, module in zip(BACKENDS, ("tensorflow", "jax", "torch")):
        try:
            if importlib.util.find_spec(module) is not None:
                return backend
        except (ImportError, ValueError):
            continue
    return "tensorflow"  # Keras then says what is missing


def _parser():
    parser = _Parser(
        prog=PROG,
        description=__doc__.split("\n\n")[0],
        epilog=f"With no arguments, {PROG} runs the offline demo:\n"
        f"  {PROG} sweep --preset demo --out {DEMO_DIR}\n"
        "(digits, resnet8, BASE vs c = 0.1, a = 100, 8 seeds) and its "
        f"report.\n`{PROG} COMMAND --help` lists a command's options.",
        formatter_class=_Formatter,
    )
    commands = parser.add_subparsers(
        dest="command", parser_class=_Parser, metavar="COMMAND"
    )

    def command(name, help):
        return commands.add_parser(
            name, help=help, description=help, formatter_class=_Formatter
        )

    run = command("run", "train one configuration (c = 0.1, a = 100 default)")
    _add_run_config_args(run, many=False)
    _add_backend_arg(run)
    run.add_argument("--seed", type=int, default=1, help="the run seed n")
    run.add_argument(
        "--ablation",
        choices=_config().ABLATIONS,
        metavar="KIND",
        help="init-only (c kept, a = 1) or lr-only (c = 1, a kept)",
    )
    run.add_argument(
        "--out", default="runs", metavar="DIR", help="output directory"
    )
    run.add_argument(
        "--export", action="store_true", help="also export a SavedModel"
    )
    run.add_argument(
        "--diagnostics", action="store_true", help="record BN diagnostics"
    )

    sweep = command("sweep", "a multi-seed grid (with BASE) or a preset")
    _add_run_config_args(sweep, many=True)
    _add_backend_arg(sweep)
    sweep.add_argument(
        "--preset",
        choices=tuple(_presets().PRESETS),
        metavar="NAME",
        help=f"a paper experiment: {', '.join(_presets().PRESETS)}",
    )
    sweep.add_argument(
        "--ablation",
        choices=_config().ABLATIONS,
        metavar="KIND",
        help="init-only or lr-only, for every run",
    )
    sweep.add_argument(
        "--seeds",
        help="seeds, e.g. 1-15 or 1,2,5 (default: 1-15, or the preset's)",
    )
    sweep.add_argument(
        "--out",
        metavar="DIR",
        help="sweep directory (default: runs/sweep-PRESET or runs/sweep-grid)",
    )
    sweep.add_argument(
        "--no-base", action="store_true", help="no BASE runs (c = 1, a = 1)"
    )
    sweep.add_argument(
        "--retry-failed", action="store_true", help="run failed runs again"
    )
    sweep.add_argument(
        "--dry-run", action="store_true", help="list the runs, train nothing"
    )
    sweep.add_argument(
        "--row-key",
        metavar="FIELD",
        help="report rows by this field (default: the preset's, or gamma)",
    )
    _add_executor_args(sweep)

    report = command("report", "tables and plots of a sweep")
    report.add_argument("sweep_dir", help="a sweep's output directory")
    report.add_argument(
        "--row-key",
        metavar="FIELD",
        help="rows by gamma, bn, input_norm, ... (default: the sweep's)",
    )
    report.add_argument(
        "--decision",
        choices=("raw", "holm"),
        default="raw",
        help="bold a row when its raw or its Holm-adjusted p <= the "
        "significance level, 0.05",
    )

    plot = command("plot", "diagnostics plots of a run")
    plot.add_argument("run_dir", help="a run directory (with --diagnostics)")
    return parser


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
    _presets()
    check = _light_module("keras_bninit.harness.precheck")
    backend = os.environ["KERAS_BACKEND"]
    check.check_backend_installed(backend)
    if args.command == "run":
        check.check_run(_args_config(args), backend)
    elif args.command == "sweep":
        _check_row_key(args.row_key)
        check.check_runs(_sweep_runs(args)[0], backend)
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


def _sweep(args):
    from keras_bninit.harness.experiment import check_output_dir
    from keras_bninit.harness.sweep import run_sweep

    _checked(_check_row_key, args.row_key)
    runs, row_key, name = _checked(_sweep_runs, args)
    row_key = args.row_key or row_key
    _check_models(runs)
    _check_executor_args(args)
    if args.dry_run:
        for config in runs:
            print(config.run_name())
        _print_estimate(runs, args.images_per_second, args.workers)
        return 0
    sweep_dir = args.out or os.path.join("runs", f"sweep-{name}")
    if os.path.exists(sweep_dir) and not os.path.isdir(sweep_dir):
        _fail(f"the output path {sweep_dir!r} is a file; give a directory")
    _checked(check_output_dir, sweep_dir)
    _checked(_check_store, sweep_dir)
    _checked(_check_sweep_folder, sweep_dir, runs)
    _checked(_check_data, runs)
    executor = _executor(args)  # Ray started and checked, nothing written
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
        )
    if not args.quiet:
        print(
            f"[sweep] {counts['total']} runs: {counts['skipped']} already "
            f"done, {counts['ran']} ran ({counts['failed']} failed)"
        )
    return _checked(_report_dir, sweep_dir, row_key, "raw", args.quiet)


_RAY_ONLY = ("ray_address", "cpus_per_run", "gpus_per_run", "ship_files")
# RayExecutor's argument names in its messages -> this command's options.
_RAY_OPTIONS = {
    "`address`": "--ray-address",
    "`num_cpus_per_run`": "--cpus-per-run",
    "`num_gpus_per_run`": "--gpus-per-run",
    "`workers`": "--workers",
}


def _check_executor_args(args):
    """Options of the other executor, and dry-run-only options, rejected."""
    if args.executor != "ray":
        for name in _RAY_ONLY:
            if getattr(args, name) not in (None, False):
                option = "--" + name.replace("_", "-")
                _fail(f"{option} needs --executor ray")
        if args.workers is not None and not args.dry_run:
            _fail(
                "--workers needs --executor ray (the local executor trains "
                "one run at a time)"
            )
    if args.images_per_second is not None:
        if not args.dry_run:
            _fail("--images-per-second needs --dry-run")
        if not args.images_per_second > 0:
            _fail(
                "--images-per-second must be > 0. Received: "
                f"{args.images_per_second:g}"
            )
    if args.workers is not None and args.workers < 1:
        _fail(f"--workers must be an integer >= 1. Received: {args.workers}")
    if args.executor == "ray":
        _ray_executor(args)  # validates the values; starts nothing


def _ray_executor(args):
    from keras_bninit.harness.ray_executor import RayExecutor

    try:
        return RayExecutor(
            address=args.ray_address,
            num_cpus_per_run=1
            if args.cpus_per_run is None
            else args.cpus_per_run,
            num_gpus_per_run=args.gpus_per_run or 0,
            workers=args.workers,
            ship_files=args.ship_files,
        )
    except ValueError as error:
        message = str(error)
        for name, option in _RAY_OPTIONS.items():
            message = message.replace(name, option)
        _fail(message)


def _executor(args):
    """None (the local executor) or a started RayExecutor."""
    if args.executor != "ray":
        return None
    from keras_bninit.harness.ray_executor import RayUnavailableError

    executor = _ray_executor(args)
    try:
        executor.start()
    except (RayUnavailableError, ValueError) as error:
        _fail(str(error))
    except ConnectionError as error:
        _fail(
            f"cannot reach a Ray cluster at --ray-address "
            f"{args.ray_address}: {error}".replace("\n", " ")
        )
    return executor


def _print_estimate(runs, images_per_second, workers):
    """The work of a sweep, and its hours at a measured throughput."""
    from keras_bninit.harness.presets import estimate

    plan = estimate(runs, images_per_second, workers or 1)
    images = (
        f"{plan['images']:,} training images"
        if plan["images"] is not None
        else "training images unknown (a directory data set)"
    )
    print(f"{plan['runs']} runs, {plan['epochs']:,} epochs, {images}")
    if plan["hours"] is not None:
        print(
            f"estimated {plan['hours']:.1f} hours on one GPU at "
            f"{images_per_second:,.0f} images/s"
        )
        if workers and workers > 1:
            print(
                f"estimated {plan['hours_workers']:.1f} hours for {workers} "
                f"workers, one GPU each"
            )


def _report_dir(sweep_dir, row_key, decision, quiet=False):
    from keras_bninit.harness import report, report_inputs
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
    )
    if not quiet:
        print(text)
        print(f"report: {paths['markdown']}, {paths['latex']}, {paths['csv']}")
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


def _import_quietly():
    """Imports Keras (TensorFlow where installed) and the library, fd 2 muted.

    TensorFlow's C++ start-up notes (oneDNN, "no CUDA drivers", cuInit) are
    written straight to file descriptor 2 whatever TF_CPP_MIN_LOG_LEVEL
    says; they would bury the one-line errors of this command. A failing
    import is re-raised with stderr restored.
    """
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import keras_bninit  # noqa: F401  (imports Keras)
        import keras_bninit.models  # noqa: F401
        from keras_bninit.harness import _tf

        if _tf.available():  # GPUs hidden from it off the TF backend
            _tf.tensorflow().config.list_physical_devices()  # notes, muted
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def main(argv=None, prog=None):
    """Runs the command line on `argv` (default `sys.argv[1:]`); returns
    the exit status. `prog` names the command in messages."""
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
    sys.exit(main(prog="keras-bninit"))
