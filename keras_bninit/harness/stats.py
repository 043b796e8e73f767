"""Tests of significance for multi-seed comparisons against BASE.

The paper's protocol (Section 4.3): every configuration runs with seeds
1..15; run `s` of a configuration and run `s` of BASE form a pair (same
data order, same initial weights up to the changed scales). A configuration
is significantly better than BASE when the one-sided paired t-test gives
p <= 0.05.

Beyond the paper, every comparison also reports
- the Wilcoxon signed-rank test, as a check that does not assume normal
  differences, computed by enumerating sign flips (a permutation test)
  because accuracy differences tie often;
- Holm's correction over the configurations compared with the same BASE
  (the paper tests many configurations without correction);
- the mean difference with its 95 % t confidence interval;
- the paired effect size Cohen's d_z = mean(d) / sd(d);
- the probability of outperforming P(ours > BASE) with a bootstrap interval
  (Bouthillier et al., "Accounting for Variance in Machine Learning
  Benchmarks", MLSys 2021).

Accuracies are compared as given (fractions or percent alike). Inputs are
mappings `seed -> accuracy`, so pairs are matched by seed, never by position.

Identical runs (every paired difference zero, e.g. a configuration that
equals BASE) leave the t statistic 0 / 0: the t-test's p-value is NaN, as
`scipy.stats.ttest_rel` gives, so it is never significant, and reports say
"identical runs" in its place.

Many configurations compared from stored result records:
`harness.stats_records.compare_records`.
"""

import dataclasses
import math
import numbers

import numpy as np
import scipy.stats
from statsmodels.stats.multitest import multipletests

ALPHA = 0.05

# Paired differences are rounded to this many decimals before they are
# compared with each other or with zero: accuracies saved from float32
# metrics carry noise around 1e-8 that would otherwise split true ties
# (two runs with the same number of correct test images).
DECIMALS = 6

# Up to this many pairs the Wilcoxon null distribution is enumerated
# exactly (2**n sign assignments); beyond it, seeded random sign flips.
WILCOXON_EXACT_MAX_N = 16
WILCOXON_RESAMPLES = 2**16 - 1

BOOTSTRAP_RESAMPLES = 10_000


# What reports print for the undefined p-value of identical runs (also the
# `note` of such a row).
IDENTICAL_RUNS = "identical runs"

# Fewer paired seeds than this are too few to judge a configuration by
# (the paper uses 15, Section 4.3): the statistics are computed, and the
# row's note says so.
MIN_SEEDS_TO_JUDGE = 5


def too_few_seeds(n):
    """The note of a comparison on `n` < `MIN_SEEDS_TO_JUDGE` pairs."""
    return f"too few seeds to judge (n = {n} < {MIN_SEEDS_TO_JUDGE})"


@dataclasses.dataclass(frozen=True)
class PairedSample:
    """Accuracies of two configurations paired by seed.

    Attributes:
        seeds: the seeds both have, sorted.
        ours: the configuration's accuracies, in `seeds` order.
        base: BASE's accuracies, in `seeds` order.
        missing_in_ours: seeds BASE has and the configuration lacks.
        missing_in_base: seeds the configuration has and BASE lacks.
    """

    seeds: tuple
    ours: np.ndarray
    base: np.ndarray
    missing_in_ours: tuple = ()
    missing_in_base: tuple = ()

    @property
    def n(self):
        """The number of pairs."""
        return len(self.seeds)

    @property
    def differences(self):
        """ours - base per seed, rounded to `DECIMALS`."""
        return np.round(self.ours - self.base, DECIMALS)


@dataclasses.dataclass(frozen=True)
class PairedComparison:
    """Every statistic of one configuration against its BASE.

    Attributes:
        n: number of pairs (common seeds).
        seeds: the common seeds.
        mean_difference: mean of ours - base.
        ci_low, ci_high: 95 % t confidence interval of the mean difference.
        t: paired t statistic (inf/-inf/nan for zero-variance differences).
        p_value: one-sided paired t-test p-value (alternative "greater");
            NaN for identical runs.
        identical: every paired difference is zero (after rounding to
            `DECIMALS`), so the t-test is undefined.
        wilcoxon_p: one-sided Wilcoxon signed-rank p-value.
        effect_size_dz: Cohen's d_z = mean(d) / sd(d).
        p_outperform: P(ours > base), ties counting one half.
        p_outperform_ci_low, p_outperform_ci_high: its bootstrap interval.
    """

    n: int
    seeds: tuple
    mean_difference: float
    ci_low: float
    ci_high: float
    t: float
    p_value: float
    identical: bool
    wilcoxon_p: float
    effect_size_dz: float
    p_outperform: float
    p_outperform_ci_low: float
    p_outperform_ci_high: float


# ---------------------------------------------------------------------------
# Pairing
# ---------------------------------------------------------------------------


def _as_seed_map(name, values):
    if not hasattr(values, "keys"):
        raise TypeError(
            f"`{name}` must be a mapping seed -> accuracy so that runs are "
            f"paired by seed. Received: {type(values).__name__}"
        )
    result = {}
    for seed, value in values.items():
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
            raise ValueError(
                f"Seeds in `{name}` must be integers. Received: seed={seed!r}"
            )
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ValueError(
                f"`{name}[{seed}]` must be a real number. Received: {value!r}"
            )
        if not math.isfinite(value):
            raise ValueError(
                f"`{name}[{seed}]` must be finite (store a failed run as "
                f"failed, not as an accuracy). Received: {value!r}"
            )
        result[int(seed)] = float(value)
    return result


def pair_on_common_seeds(ours, base):
    """Pairs two seed -> accuracy mappings on the seeds both have.

    This is the "never hide missing seeds" path: it does not fail on
    mismatched seeds, it reports them (`missing_in_ours`, `missing_in_base`)
    and the number of pairs `n`, which reports show next to the result.

    Args:
        ours: mapping seed -> accuracy of the configuration.
        base: mapping seed -> accuracy of BASE.

    Returns:
        A `PairedSample`.
    """
    ours = _as_seed_map("ours", ours)
    base = _as_seed_map("base", base)
    seeds = tuple(sorted(set(ours) & set(base)))
    return PairedSample(
        seeds=seeds,
        ours=np.array([ours[s] for s in seeds], dtype=np.float64),
        base=np.array([base[s] for s in seeds], dtype=np.float64),
        missing_in_ours=tuple(sorted(set(base) - set(ours))),
        missing_in_base=tuple(sorted(set(ours) - set(base))),
    )


def pair_by_seed(ours, base):
    """Pairs two seed -> accuracy mappings that must have the same seeds.

    Args:
        ours: mapping seed -> accuracy of the configuration.
        base: mapping seed -> accuracy of BASE.

    Returns:
        A `PairedSample` with at least 2 pairs.

    Raises:
        ValueError: if the seed sets differ (the message names the seeds
            each side lacks) or there are fewer than 2 pairs.
    """
    sample = pair_on_common_seeds(ours, base)
    if sample.missing_in_ours or sample.missing_in_base:
        raise ValueError(
            "Paired tests need the same seeds on both sides. Seeds missing "
            f"in ours: {list(sample.missing_in_ours)}; seeds missing in "
            f"base: {list(sample.missing_in_base)}. Use "
            "`pair_on_common_seeds` to compare on the common seeds and "
            "report n."
        )
    _check_n(sample)
    return sample


def _check_n(sample):
    if sample.n < 2:
        raise ValueError(
            f"A paired comparison needs at least 2 pairs. Received: "
            f"n={sample.n} (seeds {list(sample.seeds)})"
        )


def _sample(ours, base):
    if isinstance(ours, PairedSample):
        _check_n(ours)
        return ours
    return pair_by_seed(ours, base)


# ---------------------------------------------------------------------------
# Single comparisons
# ---------------------------------------------------------------------------


def _zero_variance(sample):
    """Whether the (rounded) differences are all equal."""
    d = sample.differences
    return bool(np.all(d == d[0]))


def _identical(sample):
    """Whether the (rounded) differences are all zero."""
    return not np.any(sample.differences)


def paired_ttest(ours, base):
    """One-sided paired t-test of ours > base, pairing by seed.

    Uses `scipy.stats.ttest_rel(ours, base, alternative="greater")`. When
    all paired differences are equal (zero variance) the result is scipy's
    for exactly equal differences, without its warnings and whatever float
    noise the accuracies carry: t = +inf and p = 0 for a constant gain,
    t = -inf and p = 1 for a constant loss, and t = p = NaN for identical
    accuracies (0 / 0: no test, so never significant; reports print
    "identical runs").

    Args:
        ours: mapping seed -> accuracy of the configuration (or a
            `PairedSample`, then `base` is ignored).
        base: mapping seed -> accuracy of BASE, with the same seeds.

    Returns:
        `(t, p_value, df)`.
    """
    sample = _sample(ours, base)
    df = sample.n - 1
    if _zero_variance(sample):
        gain = sample.differences[0]
        if gain > 0:
            return math.inf, 0.0, df
        if gain < 0:
            return -math.inf, 1.0, df
        return math.nan, math.nan, df
    result = scipy.stats.ttest_rel(
        sample.ours, sample.base, alternative="greater"
    )
    return float(result.statistic), float(result.pvalue), df


def one_sided_paired_ttest(ours, base):
    """The paper's test (Section 4.3): p-value of ours > base.

    `scipy.stats.ttest_rel(ours, base, alternative="greater")` over the runs
    paired by seed; significant when p <= 0.05. See `paired_ttest` for the
    zero-variance case.

    Args:
        ours: mapping seed -> accuracy of the configuration.
        base: mapping seed -> accuracy of BASE, with exactly the same seeds.

    Returns:
        The p-value, a float in [0, 1], or NaN for identical runs.

    Raises:
        ValueError: mismatched seeds or fewer than 2 pairs.
    """
    return paired_ttest(ours, base)[1]


def wilcoxon_signed_rank(ours, base, seed=0):
    """One-sided Wilcoxon signed-rank p-value of ours > base.

    Zeros and ties: differences are rounded to `DECIMALS`; zero differences
    stay in the ranking but carry no sign (Pratt's method,
    `zero_method="pratt"` in scipy), tied |differences| get their average
    rank. The statistic is the sum of ranks of positive differences, and
    its null distribution is that of the observed ranks under random signs:
    `scipy.stats.permutation_test` enumerates all 2**n sign assignments for
    n <= `WILCOXON_EXACT_MAX_N` (exact given the ties), and draws
    `WILCOXON_RESAMPLES` seeded ones beyond that. This is what
    `scipy.stats.wilcoxon(d, zero_method="pratt", method=PermutationMethod())`
    computes, with the statistic vectorized over the sign flips (scipy's
    own loop takes seconds per test for n = 15). scipy's normal
    approximation, which `wilcoxon` falls back to for ties, is never used.

    If every difference is zero (identical runs) the p-value is 1, as
    `scipy.stats.wilcoxon` gives: every sign assignment then has the
    observed statistic 0, so this test is defined, and not significant.

    Args:
        ours: mapping seed -> accuracy (or a `PairedSample`).
        base: mapping seed -> accuracy of BASE, with the same seeds.
        seed: seeds the random sign flips when n is large.

    Returns:
        The p-value, a float in (0, 1].
    """
    sample = _sample(ours, base)
    d = sample.differences
    if not np.any(d):
        return 1.0
    ranks = scipy.stats.rankdata(np.abs(d))
    ranks[d == 0] = 0.0  # Pratt: zeros are ranked, then dropped

    def positive_rank_sum(x, axis=-1):
        # permutation_test flips signs in place, so |x| (and the rank of
        # each position) never changes: only the signs move.
        return np.sum(np.where(x > 0, ranks, 0.0), axis=axis)

    exact = sample.n <= WILCOXON_EXACT_MAX_N
    result = scipy.stats.permutation_test(
        (d,),
        positive_rank_sum,
        permutation_type="samples",
        vectorized=True,
        n_resamples=np.inf if exact else WILCOXON_RESAMPLES,
        alternative="greater",
        rng=np.random.default_rng(seed),
    )
    return float(result.pvalue)


def mean_difference_ci(ours, base, confidence=0.95, bounds=(0.0, 1.0)):
    """Mean of ours - base with its two-sided t confidence interval.

    mean(d) -/+ t_{(1+confidence)/2, n-1} * sd(d) / sqrt(n), from
    `scipy.stats.ttest_rel(...).confidence_interval`, clipped to the
    differences that are possible: with accuracies in [lo, hi] and BASE's
    fixed, mean(d) = mean(ours) - mean(base) lies in [lo - mean(base),
    hi - mean(base)] (a t interval of few, spread seeds can reach past
    them). With zero-variance differences the interval is the single
    point mean(d).

    Args:
        ours: mapping seed -> accuracy (or a `PairedSample`).
        base: mapping seed -> accuracy of BASE, with the same seeds.
        confidence: the confidence level, in (0, 1).
        bounds: `(lo, hi)`, the range of one accuracy (fractions: 0, 1),
            or None for a metric without bounds.

    Returns:
        `(mean_difference, low, high)`.
    """
    if not 0 < confidence < 1:
        raise ValueError(
            f"`confidence` must be in (0, 1). Received: confidence={confidence}"
        )
    sample = _sample(ours, base)
    mean = float(np.mean(sample.ours - sample.base))
    if _zero_variance(sample):
        return mean, mean, mean
    ci = scipy.stats.ttest_rel(sample.ours, sample.base).confidence_interval(
        confidence_level=confidence
    )
    low, high = float(ci.low), float(ci.high)
    if bounds is not None:
        lo, hi = bounds
        values = np.concatenate([sample.ours, sample.base])
        if values.min() < lo or values.max() > hi:
            raise ValueError(
                f"Accuracies must lie in {list(bounds)} (bounds); pass "
                "bounds=None for another metric. Received values from "
                f"{values.min():g} to {values.max():g}"
            )
        base_mean = float(np.mean(sample.base))
        low = max(low, lo - base_mean)
        high = min(high, hi - base_mean)
    return mean, low, high


def cohens_dz(ours, base):
    """Paired effect size d_z = mean(d) / sd(d), sd with ddof = 1.

    Zero-variance differences give +inf/-inf for a constant gain/loss and
    NaN (0 / 0, as the formula gives) for identical accuracies.

    Args:
        ours: mapping seed -> accuracy (or a `PairedSample`).
        base: mapping seed -> accuracy of BASE, with the same seeds.

    Returns:
        A float.
    """
    sample = _sample(ours, base)
    if _zero_variance(sample):
        gain = sample.differences[0]
        return math.nan if gain == 0 else math.copysign(math.inf, gain)
    d = sample.ours - sample.base
    return float(np.mean(d) / np.std(d, ddof=1))


def probability_of_outperforming(
    ours,
    base,
    confidence=0.95,
    n_resamples=BOOTSTRAP_RESAMPLES,
    seed=0,
):
    """P(ours > base) over paired runs with a percentile bootstrap interval.

    Bouthillier et al. (MLSys 2021): the share of pairs where ours wins, a
    tie counting 1/2; the interval resamples the pairs
    (`scipy.stats.bootstrap`, percentile method, seeded). They call an
    improvement significant when the lower bound exceeds 0.5 and meaningful
    when it exceeds 0.75.

    Args:
        ours: mapping seed -> accuracy (or a `PairedSample`).
        base: mapping seed -> accuracy of BASE, with the same seeds.
        confidence: the interval's confidence level.
        n_resamples: bootstrap resamples.
        seed: seeds the bootstrap (`numpy.random.default_rng(seed)`).

    Returns:
        `(p, low, high)`.
    """
    sample = _sample(ours, base)
    d = sample.differences
    wins = np.where(d > 0, 1.0, np.where(d == 0, 0.5, 0.0))
    p = float(np.mean(wins))
    if np.all(wins == wins[0]):
        return p, p, p  # every resample gives the same share
    result = scipy.stats.bootstrap(
        (wins,),
        np.mean,
        n_resamples=n_resamples,
        confidence_level=confidence,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    ci = result.confidence_interval
    return p, float(ci.low), float(ci.high)


def holm(p_values, alpha=ALPHA):
    """Holm's step-down correction (`multipletests(method="holm")`).

    NaN p-values (comparisons that could not be made) stay NaN, are not
    rejected, and do not count towards the number of tests: the others are
    adjusted as a family without them. (`multipletests` given a NaN counts
    it, and may reject it.) `stats_records.compare_records` counts
    identical runs, whose p-value is NaN, as tests with p = 1.

    Args:
        p_values: sequence of raw p-values of one family of tests.
        alpha: the family-wise error rate.

    Returns:
        `(reject, corrected)`: lists of bools and of corrected p-values, in
        the order of `p_values`.
    """
    p_values = np.asarray(p_values, dtype=np.float64)
    reject = np.zeros(p_values.shape, dtype=bool)
    corrected = np.full(p_values.shape, np.nan)
    valid = ~np.isnan(p_values)
    if np.any(valid):
        r, c, _, _ = multipletests(p_values[valid], alpha=alpha, method="holm")
        reject[valid] = r
        corrected[valid] = c
    return [bool(x) for x in reject], [float(x) for x in corrected]


def compare(ours, base, confidence=0.95, seed=0):
    """Every statistic of one configuration against BASE.

    Args:
        ours: mapping seed -> accuracy of the configuration (or a
            `PairedSample`).
        base: mapping seed -> accuracy of BASE, with the same seeds.
        confidence: level of the mean-difference and bootstrap intervals.
        seed: seeds the bootstrap and, for large n, the Wilcoxon test.

    Returns:
        A `PairedComparison`.
    """
    sample = _sample(ours, base)
    t, p, _ = paired_ttest(sample, None)
    mean, low, high = mean_difference_ci(sample, None, confidence)
    p_out, p_low, p_high = probability_of_outperforming(
        sample, None, confidence=confidence, seed=seed
    )
    return PairedComparison(
        n=sample.n,
        seeds=sample.seeds,
        mean_difference=mean,
        ci_low=low,
        ci_high=high,
        t=t,
        p_value=p,
        identical=_identical(sample),
        wilcoxon_p=wilcoxon_signed_rank(sample, None, seed=seed),
        effect_size_dz=cohens_dz(sample, None),
        p_outperform=p_out,
        p_outperform_ci_low=p_low,
        p_outperform_ci_high=p_high,
    )
