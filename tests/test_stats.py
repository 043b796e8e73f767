"""Statistics against values computed by hand (Section 4.3)."""

import math
import warnings

import numpy as np
import pytest
import scipy.stats

from keras_bninit.harness import stats, stats_records

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


def test_holm_nan_is_never_rejected_and_the_others_are_holm_without_it():
    p = [0.01, math.nan, 0.02, 0.001]
    reject, corrected = stats.holm(p)
    without = stats.holm([0.01, 0.02, 0.001])
    assert not reject[1] and math.isnan(corrected[1])
    assert [reject[i] for i in (0, 2, 3)] == without[0] == [True, True, True]
    assert [corrected[i] for i in (0, 2, 3)] == pytest.approx(without[1])


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
    assert math.isnan(stats.one_sided_paired_ttest(ours, base))


def _scipy_quietly(function, *args, **kwargs):
    """scipy's answer; it warns on zero-variance input."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return function(*args, **kwargs)


def test_identical_runs_give_scipys_nan_not_a_p_of_one():
    ours = np.array(list(BASE.values()))
    expected = _scipy_quietly(
        scipy.stats.ttest_rel, ours, ours.copy(), alternative="greater"
    )
    assert np.isnan(expected.statistic) and np.isnan(expected.pvalue)

    t, p, df = stats.paired_ttest(dict(BASE), BASE)

    assert math.isnan(t) and math.isnan(p) and df == N - 1
    assert math.isnan(stats.one_sided_paired_ttest(dict(BASE), BASE))
    # The Wilcoxon test is defined (every sign flip gives the statistic 0):
    # p = 1, as scipy gives.
    wilcoxon = _scipy_quietly(
        scipy.stats.wilcoxon,
        ours - ours,
        zero_method="pratt",
        alternative="greater",
        method=scipy.stats.PermutationMethod(n_resamples=np.inf),
    )
    assert stats.wilcoxon_signed_rank(BASE, BASE) == wilcoxon.pvalue == 1.0
    # d_z = 0 / 0, as mean(d) / sd(d) gives; the interval is a point, as
    # scipy's two-sided interval is.
    d = ours - ours
    dz = _scipy_quietly(np.divide, np.mean(d), np.std(d, ddof=1))
    assert np.isnan(dz) and math.isnan(stats.cohens_dz(BASE, BASE))
    ci = _scipy_quietly(scipy.stats.ttest_rel, ours, ours.copy())
    ci = ci.confidence_interval()
    assert stats.mean_difference_ci(BASE, BASE) == (0.0, ci.low, ci.high)


def test_constant_shift_gives_scipys_limits():
    for gain, t, p in ((0.25, math.inf, 0.0), (-0.25, -math.inf, 1.0)):
        ours = {s: v + gain for s, v in BASE.items()}
        # Differences exact in binary, so scipy sees zero variance too.
        a = np.array([0.5, 0.75, 0.25, 1.0])
        expected = _scipy_quietly(
            scipy.stats.ttest_rel, a + gain, a, alternative="greater"
        )
        assert (expected.statistic, expected.pvalue) == (t, p)
        assert stats.paired_ttest(ours, BASE)[:2] == (t, p)
        assert stats.cohens_dz(ours, BASE) == t


def test_identical_and_constant_shift_are_defined_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        same = stats.compare(BASE, BASE)
        shifted = stats.compare({s: v + 0.01 for s, v in BASE.items()}, BASE)
    assert same.identical and not shifted.identical
    assert math.isnan(same.p_value) and math.isnan(same.t)
    assert same.wilcoxon_p == 1.0
    assert math.isnan(same.effect_size_dz)
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
    rows = stats_records.compare_records(base + good)
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
        rows = stats_records.compare_records(records, holm_family=family)
        tested = [r for r in rows if not r["is_base"]]
        raw = sorted(r["p_value"] for r in tested)
        assert min(r["p_holm"] for r in tested) == pytest.approx(
            min(1.0, raw[0] * size)
        )


def test_compare_records_identical_runs_count_in_holm_and_are_never_marked():
    base = [_record(s, 0.80 + 0.01 * (s % 3)) for s in range(1, 5)]
    same = [_record(s, 0.80 + 0.01 * (s % 3), gamma=0.5) for s in range(1, 5)]
    gains = (0.02, 0.03, 0.025, 0.022)
    good = [
        _record(s, 0.80 + 0.01 * (s % 3) + g, gamma=0.1)
        for s, g in zip(range(1, 5), gains)
    ]

    rows = stats_records.compare_records(base + same + good)

    rows = {r["config"]["gamma"]: r for r in rows}
    identical, normal = rows[0.5], rows[0.1]
    assert identical["identical"] and identical["note"] == "identical runs"
    assert math.isnan(identical["p_value"]) and math.isnan(identical["p_holm"])
    assert not identical["significant"] and not identical["significant_holm"]
    # The normal row is as it would be on its own, Holm counting two tests
    # (the identical runs as p = 1, as they counted before).
    ours = {s: 0.80 + 0.01 * (s % 3) + g for s, g in zip(range(1, 5), gains)}
    common = {s: 0.80 + 0.01 * (s % 3) for s in range(1, 5)}
    p = stats.one_sided_paired_ttest(ours, common)
    assert not normal["identical"]
    assert normal["note"] == "too few seeds to judge (n = 4 < 5)"
    assert normal["p_value"] == pytest.approx(p)
    assert normal["p_holm"] == pytest.approx(min(1.0, 2 * p))
    assert normal["significant"] and normal["significant_holm"]


def test_compare_records_rejects_duplicates():
    with pytest.raises(ValueError, match="Two records for the same run"):
        stats_records.compare_records([_record(1, 0.8), _record(1, 0.81)])


def test_compare_records_without_base():
    rows = stats_records.compare_records(
        [_record(s, 0.8, gamma=0.1) for s in range(1, 4)]
    )
    assert rows[0]["note"] == "no BASE runs"
    assert rows[0]["n_base"] == 0 and math.isnan(rows[0]["p_value"])


def test_mean_difference_interval_stays_within_possible_differences():
    # Two spread seeds: the t interval reaches far past what accuracies in
    # [0, 1] allow (mean(ours) - mean(base) in [-0.85, 0.15]).
    ours, base = {1: 1.0, 2: 0.40}, {1: 0.80, 2: 0.90}
    mean, low, high = stats.mean_difference_ci(ours, base)
    t = scipy.stats.ttest_rel([1.0, 0.40], [0.80, 0.90])
    raw = t.confidence_interval(0.95)
    assert raw.high > 0.15 and raw.low < -0.85  # the unclipped interval
    assert mean == pytest.approx(-0.15)
    assert high == pytest.approx(1.0 - 0.85) and low == pytest.approx(-0.85)
    # Unbounded metrics keep the t interval; out-of-range values are named.
    assert stats.mean_difference_ci(ours, base, bounds=None)[1:] == (
        pytest.approx(raw.low),
        pytest.approx(raw.high),
    )
    with pytest.raises(ValueError, match=r"lie in \[0.0, 1.0\].*to 90"):
        stats.mean_difference_ci({1: 90.0, 2: 80.0}, {1: 85.0, 2: 70.0})


def test_fewer_than_five_pairs_are_too_few_to_judge():
    base = [_record(s, 0.80 + 0.01 * s) for s in range(1, 6)]
    good = [
        _record(s, 0.83 + 0.01 * s + 0.001 * s, gamma=0.1) for s in range(1, 6)
    ]
    rows = {
        r["config"]["gamma"]: r
        for r in stats_records.compare_records(base + good)
    }
    assert rows[0.1]["n"] == 5 and rows[0.1]["note"] == ""
    rows = {
        r["config"]["gamma"]: r
        for r in stats_records.compare_records(base[:3] + good[:3])
    }
    assert rows[0.1]["note"] == "too few seeds to judge (n = 3 < 5)"
    assert not math.isnan(rows[0.1]["p_value"])  # still computed
