"""A group-sequential paired test: seeds that stop when the answer is known.

Beyond the paper. The paper judges every configuration on 15 paired seeds
with a one-sided paired t-test at p <= 0.05 (Section 4.3). A sequential
design looks at the pairs it has after each stage of seeds (looks at 5, 10
and 15 seeds by default) and stops a configuration as soon as its answer
is known, with the same one-sided type I error alpha:

- efficacy: the look's statistic crosses the efficacy bound; the
  configuration is significantly better than BASE and gets no more seeds;
- futility: its paired t statistic is below the futility bound
  (`FUTILITY_T`); it is not significant and gets no more seeds;
- none: it reached the last look without crossing; not significant.

The statistic at look k is the one-sided paired t-test (scipy's
`ttest_rel(alternative="greater")`, as `stats.paired_ttest`) on every pair
so far, put on the inverse-normal scale: z_k = Phi^-1(1 - p_k) (the
"significance level approach" to group-sequential t-tests, Jennison &
Turnbull, 2000). Under the null each z_k is standard normal, and for
looks at n_i < n_j pairs the cumulative statistics correlate as
sqrt(n_i / n_j): exactly so for normal differences of known spread; with
the spread estimated, each look's margin stays exact and the joint law is
approximately that. Measured (benchmarks/sequential_design.py): the bounds
alone reject 0.0517 of null sweeps at 5 pairs per look (0.0510 at 10,
0.0504 at 20); with the futility stops, as a sweep takes them, 0.048.

Efficacy bounds spend alpha with the Lan-DeMets O'Brien-Fleming function
alpha(t) = 2 - 2 Phi(Phi^-1(1 - alpha/2) / sqrt(t)) of the information
fraction t = n_k / n_K (Lan & DeMets, Biometrika 1983): bound k solves
P(Z_1 < c_1, ..., Z_k-1 < c_k-1, Z_k >= c_k) = alpha(t_k) - alpha(t_k-1),
the joint probabilities from `scipy.stats.multivariate_normal`. They are
computed ignoring futility, so futility is non-binding: stopping for
futility only removes chances to reject and never raises the type I error.
(Combining each stage's own t-test instead, Lehmacher & Wassmer's inverse
normal method, makes the joint law exact; measured, it costs power and
runs: 0.552 of Table 1(a)'s fixed runs against 0.549.)

No well-kept Python library computes these bounds (gsDesign and rpact are
R packages), so this module does, with SciPy alone. It imports neither
Keras nor TensorFlow.
"""

import collections
import dataclasses
import functools
import math

import numpy as np
import scipy.optimize
import scipy.stats

# The paper's significance level (Section 4.3), one-sided.
ALPHA = 0.05

# The default looks: seeds 1-5, 1-10, 1-15 (the paper's 15 seeds).
LOOKS = (5, 10, 15)

# Non-binding futility bounds on the paired t statistic, by look: a
# configuration whose t is below FUTILITY_T[k] at look k + 1 (t < 0 at the
# first look: no gain so far; t < 0.8 at the second) stops as not
# significant. Looks after these, and the last look, have none.
FUTILITY_T = (0.0, 0.8)

# The paper's Table 1(a) (CIFAR-10, ResNet-18, a = 100; Section 4.4): per
# learning rate, the (mean, std) test accuracy over 15 seeds of c = 0.01,
# 0.05, 0.1, 0.25, 0.5, 0.75 and 1, and of BASE. The effect sizes the
# design is simulated on (`simulate_table`, benchmarks/sequential_design.py).
TABLE_1A = {
    0.1: (
        ((85.50, 0.39), (90.19, 0.32), (90.80, 0.20), (90.32, 0.24),
         (90.17, 0.19), (90.19, 0.18), (89.81, 0.46)),
        (89.44, 0.45),
    ),
    0.01: (
        ((87.11, 0.23), (88.84, 0.32), (87.31, 0.37), (85.33, 0.43),
         (84.60, 0.35), (84.43, 0.30), (84.48, 0.33)),
        (84.64, 0.25),
    ),
    0.001: (
        ((80.37, 0.58), (76.98, 0.71), (74.48, 0.55), (73.83, 0.64),
         (72.80, 0.68), (72.01, 0.58), (71.15, 0.56)),
        (71.32, 0.60),
    ),
}  # fmt: skip
TABLE_1A_GAMMAS = (0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0)

# The decisions: crossed the efficacy bound, crossed the futility bound,
# reached the last look without crossing, or still running.
EFFICACY, FUTILITY, NONE, OPEN = "efficacy", "futility", "none", "open"


def parse_looks(text, n_seeds):
    """The looks from `"5,10,15"`: seed counts after which the sweep tests.

    Args:
        text: comma-separated increasing integers; a paired t-test needs
            2 pairs, so the first is at least 2.
        n_seeds: the sweep's number of seeds: the last look must equal it
            (it is the planned maximum).

    Returns:
        A tuple of ints.

    Raises:
        ValueError: one line naming the value and the valid form.
    """
    form = (
        "increasing seed counts >= 2, comma-separated, the last equal to "
        f"the number of seeds ({n_seeds}), e.g. "
        f"{_example_looks(n_seeds)}"
    )
    try:
        looks = tuple(int(part) for part in str(text).split(","))
    except ValueError:
        raise ValueError(
            f"--looks {text!r} is not a list of integers; give {form}"
        ) from None
    if looks[0] < 2 or any(b <= a for a, b in zip(looks, looks[1:])):
        raise ValueError(f"--looks {text!r}: give {form}")
    if looks[-1] != n_seeds:
        raise ValueError(
            f"--looks {text!r}: the last look must equal the number of "
            f"seeds, {n_seeds}; give {form}"
        )
    return looks


def _example_looks(n):
    if n < 4:
        return str(n)
    thirds = sorted({max(2, round(n * k / 3)) for k in (1, 2, 3)})
    return ",".join(map(str, thirds))


def obrien_fleming_spent(fraction, alpha=ALPHA):
    """The type I error spent by information fraction `fraction` (Lan &
    DeMets's O'Brien-Fleming form): 2 - 2 Phi(Phi^-1(1 - alpha/2) /
    sqrt(t)); `alpha` at t = 1, almost nothing early."""
    fraction = np.asarray(fraction, dtype=np.float64)
    z = scipy.stats.norm.isf(alpha / 2) / np.sqrt(fraction)
    return 2.0 * scipy.stats.norm.sf(z)


def _correlation(looks):
    n = np.asarray(looks, dtype=np.float64)
    return np.sqrt(np.minimum.outer(n, n) / np.maximum.outer(n, n))


def _below(looks, bounds):
    """P(Z_1 < b_1, ..., Z_k < b_k) for the first k = len(bounds) looks."""
    k = len(bounds)
    if k == 1:
        return float(scipy.stats.norm.cdf(bounds[0]))
    if not np.isfinite(bounds[-1]):
        return 0.0 if bounds[-1] < 0 else _below(looks, bounds[:-1])
    return float(
        scipy.stats.multivariate_normal.cdf(
            np.asarray(bounds, dtype=np.float64),
            cov=_correlation(looks[:k]),
            abseps=1e-7,
            releps=1e-7,
            rng=np.random.default_rng(0),  # the same bounds every time
        )
    )


def _excess(c, looks, bounds, target):
    return _below(looks, [*bounds, c]) - target


@functools.lru_cache(maxsize=64)
def efficacy_bounds(looks, alpha=ALPHA):
    """The efficacy bounds on the z scale, one per look.

    Bound k solves P(no crossing before look k, Z_k >= c_k) =
    alpha(t_k) - alpha(t_k-1) under the null (`obrien_fleming_spent`),
    with the looks' z statistics jointly normal, corr sqrt(n_i / n_j).
    With one look it is the fixed test's Phi^-1(1 - alpha).

    Args:
        looks: a tuple of increasing seed counts.
        alpha: the one-sided type I error.

    Returns:
        A tuple of floats.
    """
    looks = tuple(int(n) for n in looks)
    spent = obrien_fleming_spent(np.array(looks) / looks[-1], alpha)
    bounds = [float(scipy.stats.norm.isf(spent[0]))]
    for k in range(1, len(looks)):
        # P(no crossing at looks 1..k) = 1 - alpha(t_k)
        given = (looks, tuple(bounds), 1.0 - spent[k])
        bounds.append(
            scipy.optimize.brentq(_excess, 0.0, 10.0, args=given, xtol=1e-6)
        )
    return tuple(bounds)


@dataclasses.dataclass(frozen=True)
class Design:
    """A group-sequential design: when to look, and its bounds.

    Attributes:
        looks: increasing seed counts; the last is the planned maximum.
        alpha: the one-sided type I error (the paper's 0.05).
        futility_t: non-binding futility bounds on the paired t statistic
            at the first looks (`FUTILITY_T`); never at the last look.
    """

    looks: tuple = LOOKS
    alpha: float = ALPHA
    futility_t: tuple = FUTILITY_T

    def __post_init__(self):
        looks = tuple(int(n) for n in self.looks)
        if not looks or looks[0] < 2 or list(looks) != sorted(set(looks)):
            raise ValueError(
                "`looks` must be increasing seed counts >= 2. Received: "
                f"looks={self.looks!r}"
            )
        if not 0.0 < float(self.alpha) < 0.5:
            raise ValueError(
                f"`alpha` must be in (0, 0.5). Received: alpha={self.alpha!r}"
            )
        object.__setattr__(self, "looks", looks)
        object.__setattr__(self, "alpha", float(self.alpha))
        futility = tuple(float(t) for t in self.futility_t)
        object.__setattr__(self, "futility_t", futility)

    @property
    def efficacy_z(self):
        """The efficacy bounds on the z scale (`efficacy_bounds`)."""
        return efficacy_bounds(self.looks, self.alpha)

    @property
    def spent(self):
        """The type I error spent by each look, cumulative."""
        fractions = np.array(self.looks) / self.looks[-1]
        return tuple(map(float, obrien_fleming_spent(fractions, self.alpha)))

    def futility(self, k):
        """The futility bound on t at look k (0-based), or None."""
        last = k == len(self.looks) - 1
        return None if last or k >= len(self.futility_t) else self.futility_t[k]

    def efficacy_p(self, k):
        """The efficacy bound at look k as a one-sided p-value of the
        look's t-test: significant when p <= this."""
        return float(scipy.stats.norm.sf(self.efficacy_z[k]))

    def stagewise_p(self, k, z):
        """The stage-wise adjusted p-value of stopping at look k (0-based)
        with statistic z.

        Outcomes are ordered by the look they stop at, then by z: every
        crossing at an earlier look is more extreme. So p = P(a crossing
        before look k) + P(no crossing before look k, Z_k >= z) =
        1 - P(Z_1 < c_1, ..., Z_k-1 < c_k-1, Z_k < z) under the null,
        with the efficacy bounds c (futility ignored, as in the bounds).
        It is <= alpha exactly when the design rejects, and a valid
        p-value below alpha: futility stops (t < 0.8) have p > alpha.
        """
        if math.isnan(z):
            return math.nan
        return 1.0 - _below(self.looks, [*self.efficacy_z[:k], z])

    def to_dict(self):
        """The design as JSON data (`Design(**design.to_dict())`)."""
        return {
            "looks": list(self.looks),
            "alpha": self.alpha,
            "futility_t": list(self.futility_t),
        }


# ---------------------------------------------------------------------------
# One look
# ---------------------------------------------------------------------------


def z_from_t(t, n):
    """The inverse-normal statistic of a one-sided paired t-test with `n`
    pairs: Phi^-1(1 - p), p = P(T_{n-1} >= t). Vectorized."""
    p = scipy.stats.t.sf(t, np.asarray(n) - 1)
    return scipy.stats.norm.isf(p)


def decide(design, k, t, z):
    """The decision at look k (0-based) from the look's t and z.

    Efficacy when z >= the efficacy bound; else futility when t is below
    the look's futility bound; else, at the last look, none; else the
    configuration stays open. A t of NaN (identical runs: no test) counts
    as t = z = 0. Vectorized over `t` and `z`.

    Returns:
        One of `EFFICACY`, `FUTILITY`, `NONE`, `OPEN` (an array of them
        for array input).
    """
    t = np.nan_to_num(np.asarray(t, dtype=np.float64), nan=0.0)
    z = np.nan_to_num(np.asarray(z, dtype=np.float64), nan=0.0)
    last = k == len(design.looks) - 1
    futility = design.futility(k)
    result = np.where(
        z >= design.efficacy_z[k],
        EFFICACY,
        np.where(
            t < (-np.inf if futility is None else futility),
            FUTILITY,
            NONE if last else OPEN,
        ),
    )
    return str(result) if result.ndim == 0 else result


# ---------------------------------------------------------------------------
# Simulation
# ---------------------------------------------------------------------------


@dataclasses.dataclass
class CellSimulation:
    """Simulated sweeps of one cell: BASE and configurations on paired
    seeds, each drawn normal with its own mean and spread.

    Attributes:
        stop: (sims, configs) index of the look each configuration stopped
            at (0-based).
        decision: (sims, configs) `EFFICACY`, `FUTILITY` or `NONE`.
        runs: (sims,) runs of the sweep: every configuration's seeds up to
            its stop, and BASE's up to the latest stop of its cell.
        fixed_significant: (sims, configs) the paper's fixed test on all
            seeds of the same draws: p <= alpha.
    """

    stop: np.ndarray
    decision: np.ndarray
    runs: np.ndarray
    fixed_significant: np.ndarray


def simulate_cell(design, base, configs, sims, rng):
    """Sweeps of one cell under the design, drawn with `rng`.

    Args:
        design: a `Design`.
        base: (mean, std) of BASE's accuracy.
        configs: [(mean, std), ...] of each configuration's accuracy; the
            paired differences then spread sqrt(s^2 + s_base^2).
        sims: how many sweeps.
        rng: a `numpy.random.Generator` (the same seed gives the same
            decisions).

    Returns:
        A `CellSimulation`.
    """
    n_max = design.looks[-1]
    d = paired_differences(base, configs, sims, n_max, rng)
    stop = np.full(d.shape[:2], len(design.looks) - 1)
    decision = np.full(d.shape[:2], NONE, dtype=object)
    open_ = np.ones(d.shape[:2], dtype=bool)
    for k, n in enumerate(design.looks):
        t = _t_statistic(d[..., :n])
        made = decide(design, k, t, z_from_t(t, n))
        stopped = open_ & (made != OPEN)
        stop[stopped] = k
        decision[stopped] = made[stopped]
        open_ &= ~stopped
    looks = np.asarray(design.looks)
    seeds = looks[stop]
    runs = seeds.sum(axis=1) + seeds.max(axis=1)
    p_fixed = scipy.stats.t.sf(_t_statistic(d), n_max - 1)
    return CellSimulation(stop, decision, runs, p_fixed <= design.alpha)


def paired_differences(base, configs, sims, n, rng):
    """ours - BASE of `sims` simulated sweeps of one cell, n seeds each:
    an array (sims, configurations, n). BASE's accuracies are drawn first
    (normal, `base` = (mean, std)) and shared by the configurations, each
    drawn normal with its own (mean, std) of `configs`."""
    base_acc = rng.normal(base[0], base[1], size=(sims, 1, n))
    means, stds = np.array(configs, dtype=np.float64).T.reshape(2, 1, -1, 1)
    return rng.normal(means, stds, size=(sims, len(configs), n)) - base_acc


def simulate_table(design, table=None, sims=20_000, seed=0):
    """`simulate_cell` for every cell of a paper table (`TABLE_1A` by
    default): {learning rate: CellSimulation}, each cell drawn with
    `numpy.random.default_rng([seed, its index])`."""
    table = TABLE_1A if table is None else table
    return {
        lr: simulate_cell(
            design, base, configs, sims, np.random.default_rng([seed, k])
        )
        for k, (lr, (configs, base)) in enumerate(table.items())
    }


def _t_statistic(d):
    """The paired t statistic over the last axis."""
    n = d.shape[-1]
    sd = d.std(axis=-1, ddof=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return d.mean(axis=-1) / (sd / math.sqrt(n))


def expected_runs(design, cells, effect_size, sims=2000, seed=0):
    """The expected runs of a sweep whose every configuration has paired
    effect size d_z = `effect_size` (mean / std of ours - BASE), by
    simulation.

    Args:
        design: a `Design`.
        cells: the number of configurations compared with each BASE.
        effect_size: d_z of every configuration.
        sims: simulated sweeps.
        seed: seeds the draws.

    Returns:
        A float: the mean number of runs, BASE's included.
    """
    spread = math.sqrt(0.5)  # ours and BASE alike: differences spread 1
    total = 0.0
    for m, count in sorted(collections.Counter(cells).items()):
        if m == 0:  # BASE alone: its first stage
            total += count * design.looks[0]
            continue
        rng = np.random.default_rng([seed, m])
        configs = [(float(effect_size), spread)] * m
        cell = simulate_cell(design, (0.0, spread), configs, sims, rng)
        total += count * float(cell.runs.mean())
    return total
