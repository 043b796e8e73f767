"""Multi-seed sweeps with a results store, resumable (Sections 4.3-4.4).

A sweep is a list of (configuration, seed) runs of `run_experiment`. Each
completed run is written to the sweep directory's `ResultStore` in one
transaction; re-running the same sweep skips what the store holds, resumes
the interrupted run from its last epoch (BackupAndRestore) and runs the
rest, so however often it is killed and restarted, every (configuration,
seed) ends up in the store exactly once. Runs go seed by seed (all
configurations of seed 1, then seed 2, ...), so a partial sweep already
gives paired comparisons.
"""

import dataclasses
import itertools
import os
import re
import shutil
import sys
import time
import traceback

from keras_bninit.harness import _io
from keras_bninit.harness.data import DatasetUnavailableError
from keras_bninit.harness.experiment import (
    RELATED,
    RunConfig,
    apply_ablation,
    run_experiment,
)
from keras_bninit.harness.stats import BASELINE_OVERRIDES
from keras_bninit.harness.store import ResultStore

# Fields a grid may vary; every other RunConfig field is fixed per sweep.
GRID_FIELDS = (
    "dataset",
    "model",
    "lr",
    "gamma",
    "gamma_lr_divisor",
    "bn",
    "input_norm",
)

_C_GRID = (0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0)
_C_SUBSET = (0.05, 0.1, 0.5)
_OTHER_DATASETS = (
    {"dataset": "cifar100", "model": "resnet34"},
    {"dataset": "caltech_birds2011", "model": "resnet50"},
    {"dataset": "cars196", "model": "resnet50"},
)
_ALL_DATASETS = ({"dataset": "cifar10", "model": "resnet18"},) + _OTHER_DATASETS


@dataclasses.dataclass(frozen=True)
class Preset:
    """A named sweep: grids (lists of field -> values), seeds, report rows."""

    description: str
    grids: tuple
    seeds: str = "1-15"
    row_key: str = "gamma"
    fixed: tuple = ()  # (field, value) pairs applied to every run


def _cells(cells, **grid):
    return tuple({**cell, **grid} for cell in cells)


PRESETS = {
    "table1a": Preset(
        "Table 1(a): CIFAR-10, ResNet-18, c grid x 3 learning rates, a=100",
        _cells(
            _ALL_DATASETS[:1],
            gamma=_C_GRID,
            lr=(0.1, 0.01, 0.001),
            gamma_lr_divisor=100.0,
        ),
    ),
    "table1b": Preset(
        "Table 1(b): CIFAR-100 (ResNet-34), CUB-200 and Stanford Cars "
        "(ResNet-50), c in {0.05, 0.1, 0.5}, a=100",
        _cells(
            _OTHER_DATASETS,
            gamma=_C_SUBSET,
            lr=(0.1, 0.01),
            gamma_lr_divisor=100.0,
        ),
    ),
    "table2a": Preset(
        "Table 2(a): CIFAR-10, deeper ResNets and other architectures",
        _cells(
            [
                {"dataset": "cifar10", "model": m}
                for m in (
                    "resnet50",
                    "resnet101",
                    "resnet152",
                    "repvgg_a0",
                    "mobilenet_v2",
                    "resnext50_32x4d",
                )
            ],
            gamma=_C_SUBSET,
            lr=(0.1, 0.01),
            gamma_lr_divisor=100.0,
        ),
    ),
    "table2b": Preset(
        "Table 2(b): RBN, RBN-, IEBN, IEBN- (c=1, a=1) vs ours vs BASE on "
        "the four data sets",
        _cells(
            _ALL_DATASETS,
            bn=RELATED,
            gamma=1.0,
            gamma_lr_divisor=1.0,
            lr=(0.1, 0.01),
        )
        + _cells(
            _ALL_DATASETS,
            gamma=_C_SUBSET,
            gamma_lr_divisor=100.0,
            lr=(0.1, 0.01),
        ),
        row_key="bn",
    ),
    "ablation-a1a2": Preset(
        "Alternative formulations A1, A2 vs the standard form (CIFAR-10)",
        _cells(
            _ALL_DATASETS[:1],
            bn=("standard", "a1", "a2"),
            gamma=_C_GRID,
            lr=(0.1, 0.01, 0.001),
            gamma_lr_divisor=100.0,
        ),
        row_key="bn",
    ),
    "ablation-init-lr": Preset(
        "Ablations: init only (c<1, a=1) and LR only (c=1, a=100), CIFAR-10",
        _cells(
            _ALL_DATASETS[:1],
            gamma=_C_GRID[:-1],
            gamma_lr_divisor=1.0,
            lr=(0.1, 0.01, 0.001),
        )
        + _cells(
            _ALL_DATASETS[:1],
            gamma=1.0,
            gamma_lr_divisor=100.0,
            lr=(0.1, 0.01, 0.001),
        ),
    ),
    "input-norm": Preset(
        "Input normalization: BN vs fixed vs offline (CIFAR-10, c=0.1, a=100)",
        _cells(
            _ALL_DATASETS[:1],
            input_norm=("bn", "fixed", "offline"),
            gamma=0.1,
            gamma_lr_divisor=100.0,
            lr=(0.1, 0.01, 0.001),
        ),
        row_key="input_norm",
    ),
    "demo": Preset(
        "Offline demo: digits, resnet8, BASE vs c=0.1/a=100, 8 seeds, "
        "6 epochs of batch 32",
        _cells(
            ({"dataset": "digits", "model": "resnet8"},),
            gamma=0.1,
            gamma_lr_divisor=100.0,
            lr=0.1,
        ),
        seeds="1-8",
        # Batch 32 gives 41 steps per epoch. BN running variances start at
        # 1 while, with c = 0.1, the activations' variances are ~c^2, so
        # the running statistics (momentum 0.9) need ~50 steps to forget
        # their start; at batch 128 (11 steps per epoch) the first epochs
        # would measure that rather than the method.
        fixed=(("epochs", 6), ("batch_size", 32)),
    ),
}


def parse_seeds(text):
    """Seeds from `"1-15"`, `"1,2,5"` or `"1-3,7"`, sorted and unique."""
    if isinstance(text, (list, tuple)):
        text = ",".join(str(s) for s in text)
    seeds = set()
    for part in str(text).split(","):
        match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not match or (match[2] and int(match[2]) < int(match[1])):
            raise ValueError(
                "Seeds must be non-negative integers as a list or ranges, "
                f"e.g. '1-15' or '1,2,5' or '1-3,7'. Received: {text!r}"
            )
        seeds.update(range(int(match[1]), int(match[2] or match[1]) + 1))
    return sorted(seeds)


def _as_tuple(value):
    return tuple(value) if isinstance(value, (list, tuple)) else (value,)


def expand(grids, seeds, add_base=True, ablation=None, **fixed):
    """Expands grids into the sweep's runs, seed-major, without duplicates.

    Args:
        grids: dicts mapping fields of `GRID_FIELDS` to a value or a list
            of values; each dict is a Cartesian product.
        seeds: a list of seeds or a string for `parse_seeds`.
        add_base: add BASE (c = 1, a = 1, standard BN) for every
            (data set, model, learning rate, input normalization) cell.
        ablation: None, "init-only" or "lr-only": applied to every run
            (`keras_bninit.harness.experiment.apply_ablation`; BASE stays BASE).
        **fixed: other `RunConfig` fields for every run (epochs, out, ...).

    Returns:
        A list of validated `RunConfig`s with the data set's defaults
        resolved.
    """
    seeds = parse_seeds(seeds)
    points = []
    for grid in grids:
        unknown = sorted(set(grid) - set(GRID_FIELDS))
        if unknown:
            raise ValueError(
                f"Grid fields {unknown} cannot vary; valid: {list(GRID_FIELDS)}"
            )
        names = list(grid)
        for values in itertools.product(*(_as_tuple(grid[n]) for n in names)):
            points.append(dict(zip(names, values)))
    if add_base:
        points += [{**p, **BASELINE_OVERRIDES} for p in points]
    configs, seen = [], set()
    for seed in seeds:
        for point in points:
            config = RunConfig.from_dict({**fixed, **point, "seed": seed})
            if ablation is not None:
                config = apply_ablation(config, ablation)
            config = config.resolved()
            key = (config.key(), seed)
            if key not in seen:
                seen.add(key)
                configs.append(config)
    return configs


def preset_runs(name, seeds=None, **fixed):
    """The runs of a named preset (see `PRESETS`)."""
    if name not in PRESETS:
        raise ValueError(
            f"Unknown preset {name!r}. Valid: {', '.join(PRESETS)}"
        )
    preset = PRESETS[name]
    fixed = {**dict(preset.fixed), **fixed}
    return expand(preset.grids, seeds or preset.seeds, **fixed)


def _clock(seconds):
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def run_sweep(
    configs,
    sweep_dir,
    retry_failed=False,
    quiet=False,
    build_model=None,
    row_key="gamma",
):
    """Runs every configuration not yet in the sweep's store.

    Args:
        configs: `RunConfig`s (e.g. from `expand` or `preset_runs`); their
            `out` is replaced by `<sweep_dir>/runs`.
        sweep_dir: the sweep directory; holds `results.sqlite`, `runs/` and
            `sweep.json`.
        retry_failed: run again the runs stored as failed (NaN, error);
            otherwise they are skipped and stay failures.
        quiet: print nothing (no progress line, no Keras bar).
        build_model: passed to `run_experiment`.
        row_key: the report's row field, remembered in `sweep.json`.

    Returns:
        A dict of counts: total, skipped, ran, failed.
    """
    os.makedirs(sweep_dir, exist_ok=True)
    runs_dir = os.path.join(sweep_dir, "runs")
    configs = [
        dataclasses.replace(c, out=runs_dir, verbose=0 if quiet else c.verbose)
        for c in configs
    ]
    meta_path = os.path.join(sweep_dir, "sweep.json")
    meta = _io.read_json(meta_path, {})
    meta["row_key"] = row_key
    _io.atomic_write_json(meta_path, meta)

    counts = {"total": len(configs), "skipped": 0, "ran": 0, "failed": 0}
    with ResultStore(sweep_dir) as store:
        stored_ok = store.runs("ok")
        stored_failed = store.runs("failed")
        todo = []
        for config in configs:
            key = (config.key(), config.seed)
            if key in stored_ok or (key in stored_failed and not retry_failed):
                counts["skipped"] += 1
            else:
                todo.append(config)
        start = time.perf_counter()
        for i, config in enumerate(todo):
            if not quiet:
                elapsed = time.perf_counter() - start
                eta = elapsed / i * (len(todo) - i) if i else float("nan")
                print(
                    f"[sweep] run {counts['skipped'] + i + 1}/{len(configs)} "
                    f"({counts['skipped']} done before) elapsed "
                    f"{_clock(elapsed)} remaining "
                    f"{_clock(eta) if i else '?'}: {config.run_name()}",
                    flush=True,
                )
            key = (config.key(), config.seed)
            if key in stored_failed:  # --retry-failed: start from scratch
                shutil.rmtree(
                    os.path.join(runs_dir, config.run_name()),
                    ignore_errors=True,
                )
            record = _run_one(config, build_model)
            store.put(record)
            counts["ran"] += 1
            counts["failed"] += record["status"] == "failed"
    return counts


def _run_one(config, build_model):
    import keras

    keras.backend.clear_session()  # each run starts from a clean graph
    try:
        return run_experiment(config, build_model=build_model)
    except DatasetUnavailableError:
        raise  # not a failure of this run: no run of the sweep can start
    except Exception as error:  # noqa: BLE001 - stored as the run's failure
        traceback.print_exc(file=sys.stderr)
        return {
            "config": dataclasses.asdict(config),
            "status": "failed",
            "reason": f"{type(error).__name__}: {error}",
            "test_accuracy": None,
        }
