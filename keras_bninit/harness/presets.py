"""The paper's experiments as sweeps: presets, seeds, grids and their cost
(Sections 4.1-4.5).

`preset_runs("table1a")` and `expand(grids, "1-15")` give the list of
validated, resolved `RunConfig`s that `harness.sweep.run_sweep` trains;
`estimate` says what that costs. Like `config`, this module imports
neither TensorFlow nor Keras, so `train.py` lists and checks a sweep
before the backend loads.
"""

import dataclasses
import heapq
import itertools
import math
import re

from keras_bninit.harness.config import (
    BASELINE_OVERRIDES,
    GRID_FIELDS,
    RELATED,
    SEED_LIMIT,
    SYNTHETIC_SIZE,
    TEST_FRACTION,
    RunConfig,
    apply_ablation,
    validate,
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


# A bound that keeps a typo from hanging: one sweep holds at most
# `MAX_RUNS` runs (and seeds are below `config.SEED_LIMIT`).
MAX_RUNS = 100_000


def parse_seeds(text):
    """Seeds from `"1-15"`, `"1,2,5"` or `"1-3,7"`, sorted and unique.

    Every seed is in `[0, SEED_LIMIT)` and there are at most `MAX_RUNS`
    of them; the size is checked before anything is expanded.
    """
    if isinstance(text, (list, tuple)):
        text = ",".join(str(s) for s in text)
    ranges, total = [], 0
    for part in str(text).split(","):
        match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if match and match[2] and int(match[2]) < int(match[1]):
            raise ValueError(
                f"The seed range {part.strip()!r} is reversed: its end is "
                f"below its start; give {match[2]}-{match[1]}. Received: "
                f"{text!r}"
            )
        if not match:
            raise ValueError(
                "Seeds must be non-negative integers as a list or ranges, "
                f"e.g. '1-15' or '1,2,5' or '1-3,7'. Received: {text!r}"
            )
        low, high = int(match[1]), int(match[2] or match[1])
        if high >= SEED_LIMIT:
            raise ValueError(
                f"Seeds must be < 2**31 ({SEED_LIMIT}). Received: {high} "
                f"in {text!r}"
            )
        total += high - low + 1
        if total > MAX_RUNS:
            raise ValueError(
                f"Too many seeds: {text!r} gives more than {MAX_RUNS}; "
                "give a smaller range"
            )
        ranges.append(range(low, high + 1))
    return sorted(set(itertools.chain.from_iterable(ranges)))


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
    if len(points) * len(seeds) > MAX_RUNS:
        raise ValueError(
            f"The sweep has {len(points)} configurations x {len(seeds)} seeds "
            f"= {len(points) * len(seeds)} runs, more than {MAX_RUNS}; "
            "give fewer values or seeds"
        )
    configs, seen = [], set()
    for seed in seeds:
        for point in points:
            config = RunConfig.from_dict({**fixed, **point, "seed": seed})
            if ablation is not None:
                config = apply_ablation(config, ablation)
            validate(config)
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


# The named data sets' training splits as stored (tensorflow-datasets'
# "train"; scikit-learn's 1,797 digits, 20 % of which are held out as the
# test set first). An epoch trains on what the 10 % validation split leaves.
_TRAIN_SPLIT_SIZES = {
    "cifar10": 50_000,
    "cifar100": 50_000,
    "caltech_birds2011": 5_994,
    "cars196": 8_144,
    "digits": 1_797 - math.ceil(TEST_FRACTION * 1_797),
    "synthetic": SYNTHETIC_SIZE,
}


def train_images(dataset):
    """Images one epoch of `dataset` trains on; None for a directory.

    scikit-learn's split holds out `ceil(0.1 * n)` of n examples for
    validation, so this is exact (`DatasetSplits.num_train`).
    """
    n = _TRAIN_SPLIT_SIZES.get(dataset)
    return None if n is None else n - math.ceil(0.1 * n)


def estimate(configs, images_per_second=None, workers=1):
    """The work of a sweep, and its duration at a measured throughput.

    Args:
        configs: the sweep's `RunConfig`s.
        images_per_second: one GPU's training throughput (e.g. from
            benchmarks/throughput.py), or None.
        workers: runs training at once, each at `images_per_second`; runs
            start in order whenever a worker is free, as the executors
            claim them.

    Returns:
        A dict: runs, epochs, images (training images over all epochs;
        None when a data set's size is unknown), hours (one after another
        on one GPU) and hours_workers (on `workers` GPUs), None without a
        throughput. Only training steps count: validation, testing and
        start-up add to them.
    """
    configs = [c.resolved() for c in configs]
    per_run = [(c.epochs, train_images(c.dataset)) for c in configs]
    plan = {
        "runs": len(configs),
        "epochs": sum(e for e, _ in per_run),
        "images": None,
        "hours": None,
        "hours_workers": None,
    }
    if any(n is None for _, n in per_run):
        return plan
    plan["images"] = sum(e * n for e, n in per_run)
    if images_per_second:
        free = [0.0] * max(1, int(workers))  # when each worker is free
        for epochs, n in per_run:
            seconds = epochs * n / images_per_second
            heapq.heapreplace(free, free[0] + seconds)
        plan["hours"] = plan["images"] / images_per_second / 3600
        plan["hours_workers"] = max(free) / 3600
    return plan
