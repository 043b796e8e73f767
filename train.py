"""keras_bninit command line: one run, multi-seed sweeps, reports, plots.

    python train.py                       # the offline demo sweep + report
    python train.py run --dataset digits --model resnet8 --epochs 3
    python train.py sweep --preset table1a --dry-run
    python train.py report runs/demo
    python train.py plot RUN_DIR          # diagnostics plots of a run

Every argument is checked before anything is written; a bad one prints one
error line and exits with status 2. This file only parses arguments: the
work is done by keras_bninit.harness.experiment / sweep / report.
"""

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

DEMO_DIR = os.path.join("runs", "demo")


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        # One line, status 2, no usage dump and no traceback.
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        sys.exit(2)


def _fail(message):
    sys.stderr.write(f"train.py: error: {message}\n")
    sys.exit(2)


# ============================================================================
# Arguments
# ============================================================================


def _add_run_config_args(parser, many):
    """The RunConfig fields; `many` lets grid fields take several values."""
    nargs = "+" if many else None
    grid = parser.add_argument_group("configuration")
    grid.add_argument("--dataset", nargs=nargs, help="data set or directory")
    grid.add_argument("--model", nargs=nargs, help="model zoo name")
    grid.add_argument("--lr", type=float, nargs=nargs, help="learning rate")
    grid.add_argument("--gamma", type=float, nargs=nargs, help="BN scale c")
    grid.add_argument(
        "--gamma-lr-divisor", type=float, nargs=nargs, help="divisor a"
    )
    grid.add_argument("--bn", nargs=nargs, help="BN formulation")
    grid.add_argument("--input-norm", nargs=nargs, help="input normalization")
    other = parser.add_argument_group("training")
    other.add_argument("--epochs", type=int)
    other.add_argument("--batch-size", type=int)
    other.add_argument("--weight-decay", type=float)
    other.add_argument("--momentum", type=float)
    other.add_argument("--activation-std", type=float)
    other.add_argument("--data-dir")
    other.add_argument(
        "--deterministic",
        action="store_true",
        help="op determinism (no XLA): same seed, same numbers",
    )
    other.add_argument("--no-jit", action="store_true", help="no XLA")
    other.add_argument("--quiet", action="store_true", help="print nothing")


def _fixed_fields(args):
    """RunConfig fields given on the command line that are not grid axes."""
    fields = {
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "weight_decay": args.weight_decay,
        "momentum": args.momentum,
        "activation_std": args.activation_std,
        "data_dir": args.data_dir,
    }
    fields = {k: v for k, v in fields.items() if v is not None}
    if args.deterministic:
        fields["deterministic"] = True
    if args.no_jit:
        fields["jit_compile"] = False
    if args.quiet:
        fields["verbose"] = 0
    return fields


def _parser():
    from keras_bninit.harness.sweep import PRESETS

    parser = _Parser(prog="train.py", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", parser_class=_Parser)

    run = commands.add_parser("run", help="train one configuration")
    _add_run_config_args(run, many=False)
    run.add_argument("--seed", type=int, default=1)
    run.add_argument("--ablation", help="init-only or lr-only")
    run.add_argument("--out", default="runs", help="output directory")
    run.add_argument("--export", action="store_true", help="SavedModel too")
    run.add_argument(
        "--diagnostics", action="store_true", help="record BN diagnostics"
    )

    sweep = commands.add_parser("sweep", help="multi-seed grid or preset")
    _add_run_config_args(sweep, many=True)
    sweep.add_argument("--preset", help=f"one of {', '.join(PRESETS)}")
    sweep.add_argument("--ablation", help="init-only or lr-only, every run")
    sweep.add_argument("--seeds", help="e.g. 1-15 or 1,2,5")
    sweep.add_argument("--out", help="sweep directory")
    sweep.add_argument("--no-base", action="store_true", help="no BASE runs")
    sweep.add_argument("--retry-failed", action="store_true")
    sweep.add_argument(
        "--dry-run", action="store_true", help="list the runs, train nothing"
    )
    sweep.add_argument("--row-key", help="report rows (default per preset)")

    report = commands.add_parser("report", help="tables of a sweep")
    report.add_argument("sweep_dir")
    report.add_argument("--row-key", help="gamma, bn, input_norm, ...")
    report.add_argument(
        "--decision", choices=("raw", "holm"), default="raw", help="bold by"
    )

    plot = commands.add_parser("plot", help="diagnostics plots of a run")
    plot.add_argument("run_dir")
    return parser


# ============================================================================
# Commands
# ============================================================================


def _checked(function, *args):
    """Runs a validation step; a bad value becomes one line and status 2."""
    from keras_bninit.harness.data import DatasetUnavailableError

    try:
        return function(*args)
    except (ValueError, DatasetUnavailableError) as error:
        _fail(str(error).replace("\n", " "))


def _run_config(args):
    from keras_bninit.harness.experiment import RunConfig, apply_ablation

    fields = {
        "dataset": args.dataset,
        "model": args.model,
        "lr": args.lr,
        "gamma": args.gamma,
        "gamma_lr_divisor": args.gamma_lr_divisor,
        "bn": args.bn,
        "input_norm": args.input_norm,
    }
    fields = {k: v for k, v in fields.items() if v is not None}
    fields.update(_fixed_fields(args), seed=args.seed, out=args.out)
    fields.update(export=args.export, diagnostics=args.diagnostics)
    config = RunConfig.from_dict(fields)
    if args.ablation is not None:
        config = apply_ablation(config, args.ablation)
    config = config.resolved()  # validates every field
    _check_models([config])
    _check_data([config])
    return config


def _run(args):
    from keras_bninit.harness.experiment import run_experiment

    config = _checked(_run_config, args)
    record = run_experiment(config, build_model=_build_model())
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
    from keras_bninit.harness.sweep import (
        GRID_FIELDS,
        PRESETS,
        expand,
        preset_runs,
    )

    grid = {
        f: getattr(args, f) for f in GRID_FIELDS if getattr(args, f) is not None
    }
    fixed = _fixed_fields(args)
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
    from keras_bninit.harness.sweep import run_sweep

    runs, row_key, name = _checked(_sweep_runs, args)
    row_key = args.row_key or row_key
    _check_models(runs)
    if args.dry_run:
        for config in runs:
            print(config.run_name())
        print(f"{len(runs)} runs")
        return 0
    sweep_dir = args.out or os.path.join("runs", f"sweep-{name}")
    if os.path.exists(sweep_dir) and not os.path.isdir(sweep_dir):
        _fail(f"the output path {sweep_dir!r} is a file; give a directory")
    _checked(_check_data, runs)
    counts = run_sweep(
        runs,
        sweep_dir,
        retry_failed=args.retry_failed,
        quiet=args.quiet,
        build_model=_build_model(),
        row_key=row_key,
    )
    if not args.quiet:
        print(
            f"[sweep] {counts['total']} runs: {counts['skipped']} already "
            f"done, {counts['ran']} ran ({counts['failed']} failed)"
        )
    return _report_dir(sweep_dir, row_key, "raw", quiet=args.quiet)


def _report_dir(sweep_dir, row_key, decision, quiet=False):
    from keras_bninit.harness import _io, report
    from keras_bninit.harness.store import STORE_FILENAME, ResultStore

    if not os.path.isfile(os.path.join(sweep_dir, STORE_FILENAME)):
        _fail(f"{sweep_dir!r} holds no sweep results ({STORE_FILENAME})")
    if row_key is None:
        row_key = _io.read_json(os.path.join(sweep_dir, "sweep.json"), {}).get(
            "row_key", "gamma"
        )
    with ResultStore(sweep_dir) as store:
        if not store.records():
            _fail(f"{sweep_dir!r} has no completed runs yet")
        text, paths = report.write_report(
            store,
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
            "`train.py run ... --diagnostics`"
        )
    for path in paths:
        print(path)
    return 0


def _build_model():
    import models

    return models.build


def _check_models(configs):
    import models

    names = models.available()
    for config in configs:
        if config.model not in names:
            _fail(f"unknown model {config.model!r}; valid: {', '.join(names)}")


def _check_data(configs):
    from keras_bninit.harness.data import ensure_available

    for dataset, data_dir in sorted(
        {(c.dataset, c.data_dir or "") for c in configs}
    ):
        ensure_available(dataset, data_dir or None)


def _import_quietly():
    """Imports TensorFlow and the library with fd 2 muted.

    TensorFlow's C++ start-up notes (oneDNN, "no CUDA drivers", cuInit) are
    written straight to file descriptor 2 whatever TF_CPP_MIN_LOG_LEVEL
    says; they would bury the one-line errors of this command. A failing
    import is re-raised with stderr restored.
    """
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import tensorflow as tf

        import keras_bninit  # noqa: F401  (imports Keras)
        import models  # noqa: F401

        tf.config.list_physical_devices()  # device start-up notes, muted
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    _import_quietly()
    if not argv:  # the embedded default: a small real sweep, offline
        argv = ["sweep", "--preset", "demo", "--out", DEMO_DIR]
    args = _parser().parse_args(argv)
    if args.command is None:
        _fail("choose a command: run, sweep, report or plot")
    if args.command == "run":
        return _run(args)
    if args.command == "sweep":
        return _sweep(args)
    if args.command == "report":
        return _checked(
            _report_dir, args.sweep_dir, args.row_key, args.decision
        )
    return _checked(_plot, args)


if __name__ == "__main__":
    sys.exit(main())
