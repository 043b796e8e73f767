"""The group-sequential design's figures, by simulation (issue 31).

`train.py sweep --sequential` (harness/sequential.py) tests each
configuration against its BASE after 5, 10 and 15 seeds: efficacy bounds
of the Lan-DeMets O'Brien-Fleming spending function on the inverse-normal
scale of the paired t-test, one-sided alpha 0.05, and non-binding futility
stops (t < 0 at 5 seeds, t < 0.8 at 10). Prints, all seeded:

- the bounds, and the error each look spends;
- the one-sided type I error under the null (paired normal data, 5 pairs
  per look), with futility stops as a sweep takes them and without, and
  the fixed test's on the same draws, each with its Monte Carlo error;
- on the paper's Table 1(a) means and standard deviations (the paired
  differences spread sqrt(s^2 + s_BASE^2), BASE shared by its cell): the
  expected runs against the fixed design's 360, and per configuration
  the power of both designs and its expected seeds (borderline cells, the
  fixed design's power between 0.05 and 0.95, marked);
- the same runs if the spreads were known (a z-test instead of the
  t-test), the assumption behind the issue's 171 runs;
- the exact alternative: each stage's own t-test combined on the
  inverse-normal scale, its type I error, runs and borderline power;
- the expected runs of a cell at paired effect sizes d_z, as
  `train.py sweep --sequential --dry-run` states them.

    python benchmarks/sequential_design.py [--sims 20000] [--seed 0]
"""

import argparse
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from keras_bninit.harness import sequential  # noqa: E402


def _args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sims", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def _design(design):
    print(f"looks at {', '.join(map(str, design.looks))} seeds, one-sided "
          f"alpha {design.alpha:g}")  # fmt: skip
    for k, n in enumerate(design.looks):
        futility = design.futility(k)
        print(
            f"  look {k + 1} (n = {n:2d}): efficacy z >= "
            f"{design.efficacy_z[k]:.3f} (t-test p <= "
            f"{design.efficacy_p(k):.5f}), alpha spent by then "
            f"{design.spent[k]:.5f}, futility "
            + ("none" if futility is None else f"t < {futility:g}")
        )


def _null(design, sims, seed):
    print(f"\ntype I error under the null ({sims:,} sweeps each)")
    se = math.sqrt(design.alpha * (1 - design.alpha) / sims)
    for looks in (design.looks, tuple(2 * n for n in design.looks)):
        for name, futility in (
            ("with futility stops", design.futility_t),
            ("bounds alone", ()),
        ):
            plan = sequential.Design(looks, design.alpha, futility)
            rng = np.random.default_rng([seed, 99])
            cell = sequential.simulate_cell(plan, (0, 1), [(0, 1)], sims, rng)
            rate = np.mean(cell.decision == sequential.EFFICACY)
            print(
                f"  looks {','.join(map(str, looks))}, {name}: {rate:.4f} "
                f"+/- {se:.4f} (the fixed test on the same draws: "
                f"{np.mean(cell.fixed_significant):.4f})"
            )


def _table(design, sims, seed):
    cells = sequential.simulate_table(design, sims=sims, seed=seed)
    fixed_total = sum(
        (len(configs) + 1) * design.looks[-1]
        for configs, _ in sequential.TABLE_1A.values()
    )
    total = sum(float(c.runs.mean()) for c in cells.values())
    print(f"\nTable 1(a) ({sims:,} sweeps per learning rate)")
    print(
        f"  expected runs {total:.1f} of the fixed design's {fixed_total} "
        f"({total / fixed_total:.3f})"
    )
    print(
        "  lr      c     power fixed  power sequential  expected seeds  "
        "stopped early"
    )
    for lr, cell in cells.items():
        seeds = np.asarray(design.looks)[cell.stop]
        early = np.mean(cell.stop < len(design.looks) - 1, axis=0)
        power = np.mean(cell.decision == sequential.EFFICACY, axis=0)
        fixed = np.mean(cell.fixed_significant, axis=0)
        for i, gamma in enumerate(sequential.TABLE_1A_GAMMAS):
            mark = "  borderline" if 0.05 < fixed[i] < 0.95 else ""
            print(
                f"  {lr:<6g}  {gamma:<4g}  {fixed[i]:11.3f}  "
                f"{power[i]:16.3f}  {seeds[:, i].mean():14.2f}  "
                f"{early[i]:13.3f}{mark}"
            )
        print(
            f"  {lr:<6g}  BASE  {'':11}  {'':16}  "
            f"{seeds.max(axis=1).mean():14.2f}  (runs of the cell: "
            f"{cell.runs.mean():.1f} of {(seeds.shape[1] + 1) * 15})"
        )
    return fixed_total


def _known_spread(design, sims, seed, fixed_total):
    """Table 1(a) with the z-test of known spreads in place of the t-test."""
    looks = np.asarray(design.looks)
    total = 0.0
    for k, (configs, base) in enumerate(sequential.TABLE_1A.values()):
        rng = np.random.default_rng([seed, k])
        d = sequential.paired_differences(base, configs, sims, looks[-1], rng)
        spread = np.hypot(np.array(configs)[:, 1], base[1])
        stop = np.full(d.shape[:2], len(looks) - 1)
        open_ = np.ones(d.shape[:2], dtype=bool)
        for i, n in enumerate(looks):
            part = d[..., :n]
            t = part.mean(-1) / (part.std(-1, ddof=1) / math.sqrt(n))
            z = part.mean(-1) / (spread / math.sqrt(n))
            stopped = open_ & (sequential.decide(design, i, t, z) != "open")
            stop[stopped] = i
            open_ &= ~stopped
        seeds = looks[stop]
        total += float((seeds.sum(axis=1) + seeds.max(axis=1)).mean())
    print(
        f"\nif the spreads were known (z-test): expected runs {total:.1f} "
        f"of {fixed_total} ({total / fixed_total:.3f})"
    )


def _combination(design, sims, seed, fixed_total):
    """The exact alternative: each stage's own t-test p-value, combined
    on the inverse-normal scale (Lehmacher & Wassmer, 1999), against the
    same bounds; futility on the cumulative t as before."""
    looks = np.asarray(design.looks)
    sizes = np.diff(looks, prepend=0)

    def run(configs, base, rng):
        d = sequential.paired_differences(base, configs, sims, looks[-1], rng)
        stop = np.full(d.shape[:2], len(looks) - 1)
        decision = np.full(d.shape[:2], sequential.NONE, dtype=object)
        open_, z_sum = np.ones(d.shape[:2], dtype=bool), 0.0
        for i, n in enumerate(looks):
            stage = d[..., n - sizes[i] : n]
            t_stage = stage.mean(-1) / (
                stage.std(-1, ddof=1) / math.sqrt(sizes[i])
            )
            z_sum = z_sum + math.sqrt(sizes[i]) * sequential.z_from_t(
                t_stage, sizes[i]
            )
            part = d[..., :n]
            t = part.mean(-1) / (part.std(-1, ddof=1) / math.sqrt(n))
            made = sequential.decide(design, i, t, z_sum / math.sqrt(n))
            stopped = open_ & (made != sequential.OPEN)
            stop[stopped], decision[stopped] = i, made[stopped]
            open_ &= ~stopped
        seeds = looks[stop]
        return seeds.sum(axis=1) + seeds.max(axis=1), decision

    _, null = run([(0, 1)], (0, 1), np.random.default_rng([seed, 99]))
    total, power = 0.0, []
    for k, (configs, base) in enumerate(sequential.TABLE_1A.values()):
        runs, decision = run(configs, base, np.random.default_rng([seed, k]))
        total += float(runs.mean())
        power.append(np.mean(decision == sequential.EFFICACY, axis=0))
    print(
        f"\nthe inverse-normal combination of stage-wise p-values instead: "
        f"type I error {np.mean(null == sequential.EFFICACY):.4f}; expected "
        f"runs {total:.1f} of {fixed_total} ({total / fixed_total:.3f}); "
        f"power at the borderline cells {power[0][6]:.3f} (lr 0.1, c = 1) "
        f"and {power[2][5]:.3f} (lr 0.001, c = 0.75)"
    )


def _effect_sizes(design, sims, seed):
    print("\nexpected runs of one cell (BASE and m configurations, all at d_z)")
    sizes = (0.0, 0.5, 1.0, 2.0, 4.0)
    print("  m   fixed  " + "  ".join(f"d_z = {d:<3g}" for d in sizes))
    for m in (1, 3, 7):
        runs = [
            sequential.expected_runs(design, [m], d, sims=sims, seed=seed)
            for d in sizes
        ]
        fixed = (m + 1) * design.looks[-1]
        print(f"  {m}  {fixed:6d}  " + "  ".join(f"{r:9.1f}" for r in runs))


def main():
    args = _args()
    design = sequential.Design()
    _design(design)
    _null(design, 10 * args.sims, args.seed)
    fixed_total = _table(design, args.sims, args.seed)
    _known_spread(design, args.sims, args.seed, fixed_total)
    _combination(design, args.sims, args.seed, fixed_total)
    _effect_sizes(design, args.sims // 4, args.seed)


if __name__ == "__main__":
    main()
