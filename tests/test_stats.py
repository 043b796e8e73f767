"""Statistics against values computed by hand (Section 4.3)."""

import math
import warnings

import numpy as np
import pytest
import scipy.stats

from keras_bninit.harness import stats

# d = ours - base = [0.01, 0.02, 0.00, 0.03]: mean 0.015, one zero.
OURS = {1: 0.90, 2: 0.92, 3: 0.91, 4: 0.93}
BASE = {1: 0.89, 2: 0.90, 3: 0.91, 4: 0.90}
D = np.array([0.01, 0.02, 0.0, 0.03])
N = 4


def _sd(d):
    m = sum(d) / len(d)
    return math.sqrt(sum((x - m) ** 2 for x in d) / (len(d) - 1))


def test_ttest_matches_formula():
    t = D.mean() / (_sd(D) / math.sqrt(N))
    t_got, p_got, df = stats.paired_ttest(OURS, BASE)
    assert t_got == pytest.approx(t)
    assert p_got == pytest.approx(scipy.stats.t.sf(t, N - 1))
    assert df == N - 1
    assert stats.one_sided_paired_ttest(OURS, BASE) == pytest.approx(p_got)


def test_ttest_pairs_by_seed_not_by_order():
    shuffled = {4: 0.93, 2: 0.92, 1: 0.90, 3: 0.91}
    assert stats.one_sided_paired_ttest(shuffled, BASE) == pytest.approx(
        stats.one_sided_paired_ttest(OURS, BASE)
    )


def test_one_sided_direction():
    p_better = stats.one_sided_paired_ttest(OURS, BASE)
    p_worse = stats.one_sided_paired_ttest(BASE, OURS)
    assert p_better < 0.5
    assert p_worse == pytest.approx(1 - p_better)


def test_mismatched_seeds_are_refused():
    with pytest.raises(ValueError, match=r"missing in ours: \[4\]"):
        stats.one_sided_paired_ttest({1: 0.9, 2: 0.9, 3: 0.8}, BASE)
    with pytest.raises(ValueError, match=r"missing in base: \[7\]"):
        stats.one_sided_paired_ttest({**OURS, 7: 0.5}, BASE)


def test_unpaired_and_invalid_inputs_are_refused():
    with pytest.raises(TypeError, match="mapping seed -> accuracy"):
        stats.one_sided_paired_ttest([0.9, 0.8], [0.7, 0.6])
    with pytest.raises(ValueError, match="at least 2 pairs"):
        stats.one_sided_paired_ttest({1: 0.9}, {1: 0.8})
    with pytest.raises(ValueError, match="finite"):
        stats.one_sided_paired_ttest({1: 0.9, 2: math.nan}, {1: 0.8, 2: 0.8})
    with pytest.raises(ValueError, match="integers"):
        stats.one_sided_paired_ttest({"1": 0.9}, {"1": 0.8})


def test_common_seeds_report_n_and_missing():
    sample = stats.pair_on_common_seeds({1: 0.9, 2: 0.8, 5: 0.7}, BASE)
    assert sample.seeds == (1, 2)
    assert sample.n == 2
    assert sample.missing_in_ours == (3, 4)
    assert sample.missing_in_base == (5,)
    np.testing.assert_allclose(sample.ours, [0.9, 0.8])
    np.testing.assert_allclose(sample.base, [0.89, 0.90])


def test_mean_difference_ci_matches_formula():
    half = scipy.stats.t.ppf(0.975, N - 1) * _sd(D) / math.sqrt(N)
    mean, low, high = stats.mean_difference_ci(OURS, BASE)
    assert mean == pytest.approx(0.015)
    assert low == pytest.approx(0.015 - half)
    assert high == pytest.approx(0.015 + half)
    _, low90, high90 = stats.mean_difference_ci(OURS, BASE, confidence=0.9)
    assert low < low90 < high90 < high


def test_cohens_dz_matches_formula():
    assert stats.cohens_dz(OURS, BASE) == pytest.approx(0.015 / _sd(D))


def test_wilcoxon_exact_by_hand():
    # Pratt: |d| ranks 1 (the zero, dropped), 2, 3, 4; all three non-zero
    # differences positive is the largest statistic: p = 1 / 2**3.
    assert stats.wilcoxon_signed_rank(OURS, BASE) == pytest.approx(1 / 8)
    # four distinct positive differences: p = 1 / 2**4
    ours = {s: 0.5 + 0.01 * s for s in range(1, 5)}
    base = {s: 0.5 for s in range(1, 5)}
    assert stats.wilcoxon_signed_rank(ours, base) == pytest.approx(1 / 16)


def test_wilcoxon_matches_scipy_permutation_method_with_ties():
    d = np.array([0.02, 0.01, 0.0, 0.01, -0.01, 0.03, 0.0, -0.02])
    base = {s: 0.8 for s in range(1, 9)}
    ours = {s: 0.8 + x for s, x in zip(range(1, 9), d)}
    expected = scipy.stats.wilcoxon(
        d,
        zero_method="pratt",
        alternative="greater",
        method=scipy.stats.PermutationMethod(n_resamples=np.inf),
    ).pvalue
    assert stats.wilcoxon_signed_rank(ours, base) == pytest.approx(expected)


def test_wilcoxon_large_n_is_seeded():
    rng = np.random.default_rng(3)
    base = {s: 0.8 for s in range(1, 21)}
    ours = {s: 0.8 + 0.01 * rng.standard_normal() + 0.005 for s in base}
    p1 = stats.wilcoxon_signed_rank(ours, base, seed=1)
    assert p1 == stats.wilcoxon_signed_rank(ours, base, seed=1)
    assert 0 < p1 < 0.5


def test_holm_by_hand():
    # sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 -> 0.02, 0.03, 0.06,
    # 0.04, made monotone -> 0.06 for the last two.
    reject, corrected = stats.holm([0.01, 0.04, 0.03, 0.005])
    assert corrected == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert reject == [True, False, False, True]


def test_holm_skips_nan():
    reject, corrected = stats.holm([0.02, math.nan, 0.04])
    assert corrected[0] == pytest.approx(0.04)
    assert math.isnan(corrected[1]) and not reject[1]
    assert corrected[2] == pytest.approx(0.04)
    assert reject == [True, False, True]


def test_probability_of_outperforming():
    p, low, high = stats.probability_of_outperforming(OURS, BASE, seed=5)
    assert p == pytest.approx(3.5 / 4)  # three wins and a tie
    assert 0 <= low <= p <= high <= 1
    again = stats.probability_of_outperforming(OURS, BASE, seed=5)
    assert again == (p, low, high)


def test_float32_noise_does_not_break_ties():
    base = {s: 0.9 + 0.01 * s for s in range(1, 6)}
    ours = {s: float(np.float32(v)) for s, v in base.items()}
    assert stats.probability_of_outperforming(ours, base)[0] == 0.5
    assert stats.one_sided_paired_ttest(ours, base) == 1.0


def test_identical_and_constant_shift_are_defined_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        same = stats.compare(BASE, BASE)
        shifted = stats.compare({s: v + 0.01 for s, v in BASE.items()}, BASE)
    assert same.p_value == 1.0 and math.isnan(same.t)
    assert same.wilcoxon_p == 1.0
    assert same.effect_size_dz == 0.0
    assert (same.ci_low, same.ci_high) == (0.0, 0.0)
    assert same.p_outperform == 0.5
    assert shifted.p_value == 0.0 and shifted.t == math.inf
    assert shifted.effect_size_dz == math.inf
    assert shifted.ci_low == pytest.approx(0.01)
    assert shifted.p_outperform_ci_low == 1.0


def _record(seed, acc, status="ok", **config):
    cfg = {
        "dataset": "cifar10",
        "model": "resnet18",
        "lr": 0.1,
        "gamma": 1.0,
        "gamma_lr_divisor": 1.0,
        "seed": seed,
        **config,
    }
    return {"config": cfg, "status": status, "test_accuracy": acc}


def test_compare_records_pairs_with_base_and_reports_n():
    base = [_record(s, 0.80 + 0.01 * (s % 3)) for s in range(1, 6)]
    good = [
        _record(s, 0.83 + 0.01 * (s % 3) + 0.001 * s, gamma=0.1)
        for s in range(1, 5)
    ]
    good.append(_record(5, None, status="failed", gamma=0.1))
    rows = stats.compare_records(base + good)
    by_gamma = {r["config"]["gamma"]: r for r in rows}
    row, base_row = by_gamma[0.1], by_gamma[1.0]
    assert base_row["is_base"] and base_row["note"] == "BASE"
    assert math.isnan(base_row["p_value"]) and not base_row["significant"]
    assert row["base_key"] == base_row["config_key"]
    assert (row["n"], row["n_ours"], row["n_base"]) == (4, 4, 5)
    assert row["n_failed"] == 1
    assert row["missing_seeds"] == (5,)
    common = {s: 0.80 + 0.01 * (s % 3) for s in range(1, 5)}
    ours = {s: 0.83 + 0.01 * (s % 3) + 0.001 * s for s in range(1, 5)}
    assert row["p_value"] == pytest.approx(
        stats.one_sided_paired_ttest(ours, common)
    )
    assert row["significant"] and row["significant_holm"]
    assert row["mean"] == pytest.approx(np.mean(list(ours.values())))


def test_compare_records_holm_families():
    records = [_record(s, 0.8 + 0.01 * s) for s in range(1, 4)]
    records += [_record(s, 0.8 + 0.01 * s, lr=0.01) for s in range(1, 4)]
    gains = {0.1: [0.02, 0.03, 0.025], 0.5: [0.01, -0.005, 0.012]}
    for gamma, gain in gains.items():
        for lr in (0.1, 0.01):
            records += [
                _record(s, 0.8 + 0.01 * s + g, gamma=gamma, lr=lr)
                for s, g in zip(range(1, 4), gain)
            ]
    for family, size in (("base", 2), ("dataset", 4)):
        rows = stats.compare_records(records, holm_family=family)
        tested = [r for r in rows if not r["is_base"]]
        raw = sorted(r["p_value"] for r in tested)
        assert min(r["p_holm"] for r in tested) == pytest.approx(
            min(1.0, raw[0] * size)
        )


def test_compare_records_rejects_duplicates():
    with pytest.raises(ValueError, match="Two records for the same run"):
        stats.compare_records([_record(1, 0.8), _record(1, 0.81)])


def test_compare_records_without_base():
    rows = stats.compare_records(
        [_record(s, 0.8, gamma=0.1) for s in range(1, 4)]
    )
    assert rows[0]["note"] == "no BASE runs"
    assert rows[0]["n_base"] == 0 and math.isnan(rows[0]["p_value"])
