"""Sequential sweeps (beyond the paper): seeds in stages, and each
configuration stopped at the first look that decides it.

The paper runs every configuration on seeds 1-15 (Section 4.3). With
`run_sweep(..., sequential=Plan(...))` (`train.py sweep --sequential`) a
sweep trains the seeds in stages, up to each look of the design
(`harness.sequential`). After each stage it tests every configuration
against its BASE (the same configuration with c = 1, a = 1, standard BN:
`stats_records.baseline_config`) on the pairs it has. A configuration that
crosses a bound gets no more seeds; its BASE keeps running while any
configuration of its cell is open.

Decisions are a function of the stored runs alone (`analyze`), so a killed
sweep resumes at the same stage with the same decisions, and several
processes sharing the folder agree on them. The plan is part of the
sweep's identity: it is written to sweep.json, and a sequential and a fixed
sweep, or two designs, are never mixed in one folder (`check_design`).
"""

import collections
import dataclasses
import json
import math
import os

import scipy.stats

from keras_bninit.harness import sequential
from keras_bninit.harness.config import canonical_config, config_key
from keras_bninit.harness.display_names import named
from keras_bninit.harness.stats import pair_on_common_seeds, paired_ttest
from keras_bninit.harness.stats_records import baseline_config
from keras_bninit.harness.store import STORE_FILENAME, ResultStore

# sweep.json's "design" of a sequential sweep; a sweep without one is fixed.
KIND = "sequential"

# The paired effect sizes d_z (mean / std of ours - BASE) at which a dry
# run states the expected number of runs.
DRY_RUN_EFFECT_SIZES = (0.0, 0.5, 1.0, 2.0)


def seed_text(seeds):
    """Seeds as ranges, e.g. "1-5,9"."""
    parts, seeds = [], sorted(seeds)
    for seed in seeds:
        if parts and seed == parts[-1][1] + 1:
            parts[-1][1] = seed
        else:
            parts.append([seed, seed])
    return ",".join(f"{a}-{b}" if b > a else str(a) for a, b in parts)


@dataclasses.dataclass(frozen=True)
class Plan:
    """A sequential sweep's design and seeds.

    Attributes:
        design: a `sequential.Design`; its last look is the number of seeds.
        seeds: the sweep's seeds; look k has the first `design.looks[k]`.
    """

    design: sequential.Design
    seeds: tuple

    def __post_init__(self):
        seeds = tuple(sorted({int(s) for s in self.seeds}))
        object.__setattr__(self, "seeds", seeds)
        if len(seeds) != self.design.looks[-1]:
            raise ValueError(
                f"The last look ({self.design.looks[-1]}) must equal the "
                f"number of seeds ({len(seeds)}: {seed_text(seeds)})"
            )

    def seeds_at(self, k):
        """The seeds look k (0-based) tests: the first `looks[k]`."""
        return self.seeds[: self.design.looks[k]]

    def stage(self, k):
        """The seeds stage k adds: those of look k and not of look k - 1."""
        start = self.design.looks[k - 1] if k else 0
        return self.seeds[start : self.design.looks[k]]

    def describe(self):
        """E.g. "looks at 5, 10, 15 of seeds 1-15"."""
        looks = ", ".join(map(str, self.design.looks))
        return f"looks at {looks} of seeds {seed_text(self.seeds)}"

    def to_meta(self):
        """sweep.json's "design"."""
        return {"kind": KIND, **self.design.to_dict(), "seeds": [*self.seeds]}

    @classmethod
    def from_meta(cls, meta):
        design = {k: v for k, v in meta.items() if k not in ("kind", "seeds")}
        return cls(sequential.Design(**design), meta["seeds"])


# ---------------------------------------------------------------------------
# The sweep's identity
# ---------------------------------------------------------------------------


def read_plan(sweep_dir):
    """The `Plan` that sweep.json records, or None (a fixed sweep).

    Raises:
        ValueError: sweep.json is not JSON, or its design is not one
            (the message names the file).
    """
    path = os.path.join(sweep_dir, "sweep.json")
    try:
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
        design = meta.get("design") if isinstance(meta, dict) else None
        return None if design is None else Plan.from_meta(design)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError, KeyError) as error:
        raise ValueError(
            f"{path!r} cannot be read ({error}); it says whether the sweep "
            "is sequential: restore it, or use another --out"
        ) from None


def check_design(sweep_dir, plan, configs=()):
    """Raises `ValueError` when `plan` (None: the fixed design) is not the
    design of the runs `sweep_dir` holds, or when one of `configs` lacks
    its BASE under a plan (`check_configs`).

    A folder's design is the one sweep.json records; a folder with runs
    and no recorded design holds a fixed sweep. A torn sweep.json is left
    to the sweep, which says so and rewrites it.
    """
    if plan is not None:
        check_configs(configs)
    try:
        stored = read_plan(sweep_dir)
    except ValueError:
        return
    if stored == plan:
        return
    if stored is not None:
        again = (
            f"--sequential --looks {','.join(map(str, stored.design.looks))}"
        )
        raise ValueError(
            f"{sweep_dir!r} holds a sequential sweep ({stored.describe()}, "
            f"alpha {stored.design.alpha:g}); "
            + (
                "a fixed sweep cannot add to it"
                if plan is None
                else f"this one has {plan.describe()}, and a design is "
                "fixed in advance"
            )
            + f": rerun with {again} --seeds {seed_text(stored.seeds)}, "
            "or use another --out"
        )
    path = os.path.join(sweep_dir, STORE_FILENAME)
    if os.path.isfile(path):
        with ResultStore(sweep_dir) as store:
            has_runs = len(store) > 0
        if has_runs:
            raise ValueError(
                f"{sweep_dir!r} holds a fixed sweep (every seed of every "
                "configuration); a sequential sweep cannot add to it: run "
                "it without --sequential, or use another --out"
            )


# ---------------------------------------------------------------------------
# Decisions from the stored runs
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Look:
    """One look at a configuration: n pairs, the paired t-test's t and
    one-sided p, and z = Phi^-1(1 - p)."""

    n: int
    t: float
    p: float
    z: float


@dataclasses.dataclass(frozen=True)
class Outcome:
    """A configuration's course through the looks.

    Attributes:
        config_key, base_key: the configuration and its BASE.
        history: a `Look` per look taken (every run of its stage stored).
        decision: `sequential.EFFICACY`, `FUTILITY`, `NONE` or `OPEN`.
        bound: the bound crossed: z for efficacy, t for futility; for
            none the last efficacy bound, not reached; None while open.
        p_stagewise: the stage-wise adjusted p-value at the decision
            (`Design.stagewise_p`); NaN while open.
    """

    config_key: str
    base_key: str
    history: tuple
    decision: str
    bound: float | None = None
    p_stagewise: float = math.nan

    @property
    def n(self):
        """Pairs at the last look taken (0 before the first)."""
        return self.history[-1].n if self.history else 0


def _groups(records, metric):
    """config_key -> (config without seed, {seed: value} ok, stored seeds)."""
    groups = {}
    for record in records:
        config = dict(record["config"])
        seed = int(config.pop("seed"))
        key = config_key(config)
        group = groups.setdefault(key, (config, {}, set()))
        group[2].add(seed)
        value = record.get(metric)
        ok = record.get("status", "ok") == "ok"
        if ok and isinstance(value, (int, float)) and math.isfinite(value):
            group[1][seed] = float(value)
    return groups


def analyze(records, plan, metric="test_accuracy", through=None):
    """Every configuration's course through the looks, from its records.

    Look k of a configuration is taken once all its runs and its BASE's
    runs of the look's seeds are stored, ok or failed; it tests the pairs
    both completed (`stats.paired_ttest`, one-sided), z = Phi^-1(1 - p),
    and decides (`sequential.decide`; identical runs, or fewer than 2
    pairs, count as t = z = 0). The first decision ends the course.

    Args:
        records: result records, failed ones included.
        plan: the sweep's `Plan`.
        metric: the record field compared.
        through: take the looks up to this one (0-based) only, as a sweep
            did after that stage; None: every look.

    Returns:
        A dict config_key -> `Outcome`, for each configuration that is not
        BASE and whose BASE has records.
    """
    groups = _groups(records, metric)
    outcomes = {}
    for key, ours in groups.items():
        base_key = config_key(baseline_config(ours[0]))
        if key != base_key and base_key in groups:
            outcomes[key] = _course(
                plan, key, base_key, ours, groups[base_key], through
            )
    return outcomes


def _course(plan, key, base_key, ours, base, through):
    design, looks = plan.design, []
    last = len(design.looks) - 1 if through is None else through
    for k in range(last + 1):
        seeds = plan.seeds_at(k)
        if not set(seeds) <= ours[2] & base[2]:
            break  # a run of this look is not stored yet
        sample = pair_on_common_seeds(
            {s: ours[1][s] for s in seeds if s in ours[1]},
            {s: base[1][s] for s in seeds if s in base[1]},
        )
        t, p = paired_ttest(sample, None)[:2] if sample.n >= 2 else (0, 0.5)
        if math.isnan(t):  # identical runs: no evidence either way
            t, p = 0.0, 0.5
        looks.append(Look(sample.n, t, p, float(scipy.stats.norm.isf(p))))
        decision = sequential.decide(design, k, t, looks[-1].z)
        if decision != sequential.OPEN:
            bound = (
                design.futility(k)
                if decision == sequential.FUTILITY
                else design.efficacy_z[k]
            )
            p_stagewise = design.stagewise_p(k, looks[-1].z)
            return Outcome(
                key, base_key, tuple(looks), decision, bound, p_stagewise
            )
    return Outcome(key, base_key, tuple(looks), sequential.OPEN)


# ---------------------------------------------------------------------------
# Stages
# ---------------------------------------------------------------------------


def check_configs(configs):
    """Raises `ValueError` naming a configuration whose BASE the sweep
    does not run: a sequential sweep tests each against its BASE."""
    keys = {c.key() for c in configs}
    for config in configs:
        if _base_key(config) not in keys:
            raise ValueError(
                f"a sequential sweep tests every configuration against its "
                f"BASE, and {config.run_name()} has none in this sweep: "
                "drop --no-base"
            )


def _base_key(config):
    return config_key(baseline_config(dataclasses.asdict(config.resolved())))


def stage_runs(configs, plan, outcomes, k):
    """The runs of stage k: its seeds of every configuration still open
    after look k - 1 (all at stage 0) and of the BASE of any of them."""
    seeds = set(plan.stage(k))
    runs = [c for c in configs if c.seed in seeds]
    if k == 0:
        return runs
    decided = {
        key for key, o in outcomes.items() if o.decision != sequential.OPEN
    }
    is_open = {}
    for config in runs:
        key, base = config.key(), _base_key(config)
        if key != base:
            is_open[key] = key not in decided
            is_open[base] = is_open.get(base, False) or is_open[key]
    return [c for c in runs if is_open.get(c.key(), False)]


def stages(store, configs, plan, say):
    """The run lists of a sweep, one per stage; the decisions printed.

    Without a plan, every run at once (the paper's fixed design). With
    one, stage k's runs (`stage_runs`) from the decisions of the runs
    stored when the caller asks for it: the caller trains each stage to
    the end before taking the next.

    Args:
        store: the sweep's open `ResultStore`.
        configs: the sweep's runs.
        plan: a `Plan`, or None.
        say: prints one line (the sweep's reporter).

    Yields:
        Lists of `RunConfig`s.
    """
    if plan is None:
        yield configs
        return
    labels = config_labels(configs)
    say(f"sequential: {plan.describe()}; {len(configs)} runs at most")
    outcomes = {}
    for k in range(len(plan.design.looks)):
        runs = stage_runs(configs, plan, outcomes, k)
        if not runs:
            break
        say(
            f"stage {k + 1} of {len(plan.design.looks)}: seeds "
            f"{seed_text(plan.stage(k))}, {len(runs)} runs"
        )
        yield runs
        outcomes = analyze(store.records(status=None), plan, through=k)
        for line in decision_lines(outcomes, k, labels):
            say(line)


def decision_lines(outcomes, k, labels):
    """One line per configuration decided at look k (0-based)."""
    lines = []
    for key, outcome in sorted(
        outcomes.items(), key=lambda o: labels.get(o[0], o[0])
    ):
        if (
            outcome.decision != sequential.OPEN
            and len(outcome.history) == k + 1
        ):
            lines.append(
                f"look {k + 1} ({outcome.n} pairs): {labels.get(key, key)}: "
                f"{outcome.decision} ({crossed(outcome)})"
            )
    return lines


def crossed(outcome):
    """The bound an outcome crossed, e.g. "z = 3.41 >= 3.20" or "t = -2.1
    < 0"; for none, the last bound it did not reach."""
    look = outcome.history[-1]
    if outcome.decision == sequential.EFFICACY:
        return f"z = {look.z:.2f} >= {outcome.bound:.2f}"
    if outcome.decision == sequential.FUTILITY:
        return f"t = {look.t:.2f} < {outcome.bound:g}"
    if outcome.decision == sequential.NONE:
        return f"z = {look.z:.2f} < {outcome.bound:.2f}"
    return "open"


_METHOD_FIELDS = ("gamma", "gamma_lr_divisor", "bn", "input_norm")


def config_labels(configs):
    """config_key -> a short label, as a report's rows and columns say it:
    c, the other method fields that vary among the configurations that are
    not BASE, the learning rate, and any other field that varies ("c=0.05,
    lr=0.01"; "BASE, lr=0.01")."""
    distinct = {c.key(): c for c in configs}
    canon = {
        k: canonical_config(dataclasses.asdict(c)) for k, c in distinct.items()
    }
    bases = {k for k, c in distinct.items() if k == _base_key(c)}

    def varying(keys):
        values = collections.defaultdict(set)
        for key in keys:
            for field, value in canon[key].items():
                values[field].add(repr(value))
        return {f for f, v in values.items() if len(v) > 1}

    ours = varying(set(canon) - bases)
    method = ["gamma"] + [f for f in _METHOD_FIELDS[1:] if f in ours]
    rest = ["lr", *sorted(varying(canon) - {*_METHOD_FIELDS, "lr"})]
    labels = {}
    for key, config in canon.items():
        parts = (
            ["BASE"]
            if key in bases
            else [named(f, config.get(f)) for f in method]
        )
        labels[key] = ", ".join(parts + [named(f, config.get(f)) for f in rest])
    return labels


# ---------------------------------------------------------------------------
# The dry run
# ---------------------------------------------------------------------------


def dry_run_lines(configs, plan, sims=2000):
    """What a dry run states: the most runs, and the expected number if
    every configuration had paired effect size d_z (`DRY_RUN_EFFECT_SIZES`),
    simulated (`sequential.expected_runs`)."""
    check_configs(configs)
    per_base = collections.Counter(
        _base_key(c) for c in {c.key(): c for c in configs}.values()
    )
    base_keys = set(per_base) & {c.key() for c in configs}
    cells = [per_base[b] - 1 for b in sorted(base_keys)]
    expected = ", ".join(
        f"{sequential.expected_runs(plan.design, cells, d, sims):.0f} at "
        f"d_z = {d:g}"
        for d in DRY_RUN_EFFECT_SIZES
    )
    return [
        f"sequential: {plan.describe()}; at most {len(configs)} runs",
        f"expected runs if every configuration's paired effect size is d_z "
        f"(mean / std of ours - BASE; {sims:,} simulated sweeps): {expected}",
    ]
