"""Many configurations from result records, each against its BASE.

`compare_records` groups stored runs by configuration, pairs each with the
runs of its BASE (`baseline_config`: c = 1, a = 1, standard BN, the rest
its own; Section 3.2) on their common seeds and reports the tests of
`harness.stats` for each, with Holm's correction over the configurations
sharing a BASE.
"""

import dataclasses
import math
import numbers

import numpy as np

from keras_bninit.harness.config import BASELINE_OVERRIDES, config_key
from keras_bninit.harness.stats import (
    ALPHA,
    IDENTICAL_RUNS,
    MIN_SEEDS_TO_JUDGE,
    compare,
    holm,
    pair_on_common_seeds,
    too_few_seeds,
)


def baseline_config(config, overrides=None):
    """The BASE configuration a configuration is compared with.

    BASE is c = 1, a = 1 with standard BN (Section 3.2); the data set,
    model, learning rate, input normalization and all other fields are the
    configuration's own.

    Args:
        config: a configuration dict (the seed is kept as is).
        overrides: the fields that make BASE; defaults to
            `BASELINE_OVERRIDES`.

    Returns:
        A new dict.
    """
    overrides = BASELINE_OVERRIDES if overrides is None else overrides
    return {**config, **overrides}


_NAN_COMPARISON = {
    "mean_difference": math.nan,
    "ci_low": math.nan,
    "ci_high": math.nan,
    "t": math.nan,
    "p_value": math.nan,
    "identical": False,
    "wilcoxon_p": math.nan,
    "effect_size_dz": math.nan,
    "p_outperform": math.nan,
    "p_outperform_ci_low": math.nan,
    "p_outperform_ci_high": math.nan,
}


def _group_records(records, metric):
    """config_key -> {"config", "accuracies" {seed: acc}, "n_failed"}."""
    groups = {}
    for record in records:
        config = dict(record["config"])
        if "seed" not in config:
            raise ValueError(f"A record's config has no 'seed': {config}")
        seed = int(config.pop("seed"))
        key = config_key(config)
        group = groups.setdefault(
            key, {"config": config, "accuracies": {}, "n_failed": 0}
        )
        if seed in group["accuracies"]:
            raise ValueError(
                f"Two records for the same run: config_key={key}, seed={seed}"
            )
        value = record.get(metric)
        ok = record.get("status", "ok") == "ok"
        if ok and isinstance(value, numbers.Real) and math.isfinite(value):
            group["accuracies"][seed] = float(value)
        else:
            group["n_failed"] += 1
    return groups


def compare_records(
    records,
    metric="test_accuracy",
    alpha=ALPHA,
    baseline=None,
    holm_family="base",
    seed=0,
):
    """One comparison row per configuration found in `records`.

    Records are grouped by configuration (`store.config_key`, which ignores
    the seed); each configuration is paired with its BASE
    (`baseline_config`) on the seeds both completed. Failed runs and
    non-finite accuracies are left out and counted in `n_failed`. Rows of
    BASE configurations, and configurations without a BASE or with fewer
    than 2 common seeds, carry NaN statistics and a `note`; identical runs
    carry a NaN t-test p-value and the note `IDENTICAL_RUNS`.

    Holm's correction runs over each family of comparisons: those sharing
    the same BASE configuration (`holm_family="base"`, the default) or all
    comparisons within a data set (`holm_family="dataset"`). Identical runs
    count in their family as a test with p = 1 (compared, no evidence of a
    gain), are never rejected, and keep a NaN `p_holm`.

    Args:
        records: iterable of result records (see `keras_bninit.harness.store`).
        metric: the record field compared.
        alpha: significance level of the raw and Holm decisions.
        baseline: BASE overrides (see `baseline_config`).
        holm_family: "base" or "dataset".
        seed: seeds the bootstrap and large-n Wilcoxon tests.

    Returns:
        A list of dicts, one per configuration, sorted by key, with:
        `config_key`, `config` (without seed), `base_key`, `is_base`,
        `seeds` (completed), `n_ours`, `n_base`, `n` (pairs), `n_failed`,
        `missing_seeds` (BASE seeds this configuration lacks), `mean`,
        `std` (ddof = 1, over all its completed seeds), `base_mean`,
        `base_std`, the `PairedComparison` fields (`identical` included),
        `significant`
        (p <= alpha), `p_holm`, `significant_holm`, and `note`.
    """
    if holm_family not in ("base", "dataset"):
        raise ValueError(
            f'`holm_family` must be "base" or "dataset". '
            f"Received: holm_family={holm_family!r}"
        )
    groups = _group_records(records, metric)
    rows = []
    for key in sorted(groups):
        group = groups[key]
        accuracies = group["accuracies"]
        base_key = config_key(baseline_config(group["config"], baseline))
        base = groups.get(base_key)
        base_acc = base["accuracies"] if base else {}
        row = {
            "config_key": key,
            "config": group["config"],
            "base_key": base_key,
            "is_base": key == base_key,
            "seeds": tuple(sorted(accuracies)),
            "n_ours": len(accuracies),
            "n_base": len(base_acc),
            "n_failed": group["n_failed"],
            **_mean_std("", accuracies),
            **_mean_std("base_", base_acc),
            **_NAN_COMPARISON,
            "note": "",
        }
        sample = pair_on_common_seeds(accuracies, base_acc)
        row["n"] = sample.n
        row["missing_seeds"] = sample.missing_in_ours
        if row["is_base"]:
            row["note"] = "BASE"
        elif base is None:
            row["note"] = "no BASE runs"
        elif sample.n < 2:
            row["note"] = f"only {sample.n} seed(s) in common with BASE"
        else:
            comparison = dataclasses.asdict(compare(sample, None, seed=seed))
            del comparison["seeds"]  # row["seeds"]: all completed seeds
            row.update(comparison)
            if row["identical"]:
                row["note"] = IDENTICAL_RUNS
            elif sample.n < MIN_SEEDS_TO_JUDGE:
                row["note"] = too_few_seeds(sample.n)
        row["significant"] = bool(row["p_value"] <= alpha)
        rows.append(row)
    _add_holm(rows, alpha, holm_family)
    return rows


def _mean_std(prefix, accuracies):
    values = np.array(list(accuracies.values()), dtype=np.float64)
    mean = float(np.mean(values)) if values.size else math.nan
    std = float(np.std(values, ddof=1)) if values.size > 1 else math.nan
    return {f"{prefix}mean": mean, f"{prefix}std": std}


def _add_holm(rows, alpha, holm_family):
    families = {}
    for index, row in enumerate(rows):
        if holm_family == "base":
            family = row["base_key"]
        else:
            family = row["config"].get("dataset")
        families.setdefault(family, []).append(index)
    for indices in families.values():
        # Identical runs were compared, so they count as tests (p = 1 can
        # never be rejected); BASE rows and rows without a comparison (NaN)
        # do not.
        p_values = [
            1.0 if rows[i]["identical"] else rows[i]["p_value"] for i in indices
        ]
        reject, corrected = holm(p_values, alpha)
        for i, r, c in zip(indices, reject, corrected):
            identical = rows[i]["identical"]
            rows[i]["p_holm"] = math.nan if identical else c
            rows[i]["significant_holm"] = r and not identical
