"""The command line's arguments: every option of run, sweep, report and
plot, most of them built from the `RunConfig` fields' metadata.

Loaded, like `harness.cli`, before Keras: it imports only the standard
library and the backend-free `harness.config`, `harness.presets` and
`harness.precheck`, which `cli` has loaded by then.
"""

import argparse
import sys

from keras_bninit.harness.config import ABLATIONS, KERAS_SEMANTICS, fields
from keras_bninit.harness.precheck import BACKEND_MODULES
from keras_bninit.harness.presets import PRESETS

BACKENDS = tuple(BACKEND_MODULES)
EXECUTORS = ("local", "ray")


class Formatter(
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


class Parser(argparse.ArgumentParser):
    def error(self, message):
        # One line, status 2, no usage dump and no traceback.
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        sys.exit(2)


def field_argument(field, many):
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


def add_run_config_args(parser, many):
    """The RunConfig fields; `many` lets grid fields take several values."""
    grid = parser.add_argument_group(
        "configuration" + (" (each takes one or more values)" if many else "")
    )
    other = parser.add_argument_group("training")
    for field in fields():
        if field.metadata["cli"] is not False:
            flags, settings = field_argument(field, many)
            group = grid if field.metadata["grid"] else other
            group.add_argument(*flags, **settings)
    keras_forms = " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in KERAS_SEMANTICS.items()
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


def add_executor_args(sweep):
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


def add_sequential_args(sweep):
    """A group-sequential design instead of the paper's fixed one."""
    design = sweep.add_argument_group(
        "sequential design (beyond the paper; docs/sequential.md)"
    )
    design.add_argument(
        "--sequential",
        action="store_true",
        help="train the seeds in stages and stop each configuration at the "
        "first look that decides it against its BASE (efficacy or futility; "
        "one-sided alpha 0.05 held); without it, every seed (the paper)",
    )
    design.add_argument(
        "--looks",
        metavar="N,N,...",
        help="with --sequential: the seed counts after which it tests, the "
        "last equal to the number of seeds (default: 5,10,15)",
    )


def add_backend_arg(parser):
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


def build_parser(prog, description, demo_dir):
    """The command line's parser: run, sweep, report and plot."""
    parser = Parser(
        prog=prog,
        description=description,
        epilog=f"With no arguments, {prog} runs the offline demo:\n"
        f"  {prog} sweep --preset demo --out {demo_dir}\n"
        "(digits, resnet8, BASE vs c = 0.1, a = 100, 8 seeds) and its "
        f"report.\n`{prog} COMMAND --help` lists a command's options.",
        formatter_class=Formatter,
    )
    commands = parser.add_subparsers(
        dest="command", parser_class=Parser, metavar="COMMAND"
    )

    def command(name, help):
        return commands.add_parser(
            name, help=help, description=help, formatter_class=Formatter
        )

    run = command("run", "train one configuration (c = 0.1, a = 100 default)")
    add_run_config_args(run, many=False)
    add_backend_arg(run)
    run.add_argument("--seed", type=int, default=1, help="the run seed n")
    run.add_argument(
        "--ablation",
        choices=ABLATIONS,
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
    add_run_config_args(sweep, many=True)
    add_backend_arg(sweep)
    sweep.add_argument(
        "--preset",
        choices=tuple(PRESETS),
        metavar="NAME",
        help=f"a paper experiment: {', '.join(PRESETS)}",
    )
    sweep.add_argument(
        "--ablation",
        choices=ABLATIONS,
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
    add_sequential_args(sweep)
    add_executor_args(sweep)

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
