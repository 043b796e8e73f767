"""What a sequential sweep decided, in its report (beyond the paper).

`mark` makes a report's tables tell a sequential sweep's decisions
(`sequential_sweep.analyze`) instead of the fixed test's: a configuration's
p is its stage-wise adjusted p-value at the look where it stopped
(`sequential.Design.stagewise_p`), so bold (p <= alpha) is exactly
"crossed the efficacy bound".

Multiplicity: Holm's correction runs over the report's family (the
configurations sharing a BASE, by default), on those stage-wise adjusted
p-values. Holm holds the family-wise error under any dependence between
the tests (they share BASE's runs) given valid p-values, P(p <= u) <= u
under the null; a stage-wise adjusted p-value is one for every u <= alpha
(up to the design's normal approximation, `harness.sequential`): below
alpha only efficacy crossings count, and they are those of the design
without futility, whose stage-wise p-value is uniform. The sweep
itself stops configurations at the per-comparison bounds, as the paper
judges each at p <= 0.05; Holm's is the family-wise reading of the same
runs (`train.py report --decision holm` bolds by it).

`Section.write` adds, per table, each configuration's course: the look at
which it stopped (n), the decision (efficacy, futility, none at the
maximum, or open), the bound it crossed, and the stage-wise and Holm
p-values, to the terminal text, report.md and sequential.csv; and a plot
of the looks' z statistics against the bounds, the configurations stopped
early marked (`sequential-<dataset>-<model>.png`).
"""

import csv
import importlib.util
import math
import os
import textwrap

from keras_bninit.harness import report_plots, sequential, sequential_sweep
from keras_bninit.harness.stats import holm

# What the tables' p and bold mean in a sequential sweep's report.
TEST = "group-sequential one-sided paired t-test, stage-wise adjusted"

# A z statistic beyond this (a constant gain: z = inf) is drawn at it.
_Z_CLIP = 8.0

# The section's columns: key, header.
_COLUMNS = (
    ("configuration", "configuration"),
    ("n", "n"),
    ("decision", "decision"),
    ("crossed", "bound crossed"),
    ("p_stagewise", "p stage-wise"),
    ("p_holm", "p Holm"),
)
_CSV_COLUMNS = (
    "table", "configuration", "config_key", "base_key", "looks_taken", "n",
    "decision", "stopped_early", "t", "p", "z", "bound", "p_stagewise",
    "p_holm", "significant_holm",
)  # fmt: skip


def mark(tables, records, plan):
    """Marks a report's tables by a sequential sweep's decisions.

    Each compared cell's `p_value` becomes its stage-wise adjusted
    p-value (NaN while the configuration is open), `significant` whether
    that is <= alpha, and `p_holm`, `significant_holm` Holm's correction
    of them over the table's family; bold follows the table's decision,
    and the tables name the test (`TEST`).

    Args:
        tables: `report.Table`s built from `records`.
        records: the checked result records.
        plan: the sweep's `sequential_sweep.Plan`, or None.

    Returns:
        A `Section`, or None without a plan.
    """
    if plan is None:
        return None
    outcomes = sequential_sweep.analyze(records, plan)
    for table in tables:
        table.test = TEST
        families = {}
        for cell in table.cells.values():
            outcome = outcomes.get(cell.stats["config_key"])
            if cell.stats["is_base"] or outcome is None:
                continue
            p = outcome.p_stagewise
            cell.stats = {
                **cell.stats,
                "p_value": p,
                "significant": bool(p <= table.alpha),
            }
            family = (
                cell.stats["base_key"]
                if table.holm_family == "base"
                else cell.stats["config"].get("dataset")
            )
            families.setdefault(family, []).append(cell)
        for cells in families.values():
            p_values = [c.stats["p_value"] for c in cells]
            for cell, r, p in zip(cells, *holm(p_values, table.alpha)):
                cell.stats.update(p_holm=p, significant_holm=r)
                cell.bold = r if table.decision == "holm" else (
                    cell.stats["significant"]
                )  # fmt: skip
    return Section(plan, outcomes, tables)


class Section:
    """A sequential sweep's part of its report (see `mark`)."""

    def __init__(self, plan, outcomes, tables):
        self.plan, self.outcomes, self.tables = plan, outcomes, tables

    def design_text(self):
        """The design and the multiplicity correction, in one paragraph."""
        design = self.plan.design
        k = range(len(design.looks))
        bounds = ", ".join(f"{design.efficacy_z[i]:.2f}" for i in k)
        p = ", ".join(f"{design.efficacy_p(i):.3g}" for i in k)
        futility = ", ".join(
            f"t < {design.futility(i):g} at look {i + 1}"
            for i in k
            if design.futility(i) is not None
        )
        families = {t.holm_family for t in self.tables}
        family = (
            "the configurations of a data set"
            if families == {"dataset"}
            else "the configurations sharing a BASE"
        )
        return (
            f"Sequential design (beyond the paper): {self.plan.describe()}; "
            f"one-sided alpha {design.alpha:g} spent by the Lan-DeMets "
            "O'Brien-Fleming function: efficacy when z = Phi^-1(1 - p) of "
            f"the look's paired t-test >= {bounds} (p <= {p}); non-binding "
            f"futility: {futility or 'none'}. n: pairs at the look where it "
            "stopped, of the planned maximum; p stage-wise: adjusted for the "
            f"looks (stage-wise ordering); p Holm: over {family}."
        )

    def rows(self, table):
        """One dict per cell of `table`, in the order of its comparisons:
        display strings under the `_COLUMNS` keys, "outcome" (None for
        BASE and cells without a BASE) and "stats"."""
        rows = []
        last = self.plan.design.looks[-1]
        looks = len(self.plan.design.looks)
        for (i, j), cell in sorted(table.cells.items()):
            stats = cell.stats
            outcome = self.outcomes.get(stats["config_key"])
            row = {
                "configuration": f"{table.row_labels[i]}, "
                f"{table.column_labels[j]}",
                "stats": stats,
                "column": j,
                "outcome": None if stats["is_base"] else outcome,
            }
            if row["outcome"] is None:
                note = "BASE" if stats["is_base"] else stats["note"] or "–"
                row.update(n=f"{stats['n_ours']}/{last}", decision=note)
                row.update(crossed="–", p_stagewise="–", p_holm="–")
            else:
                early = _early(outcome, looks)
                row.update(
                    n=f"{outcome.n}/{last}",
                    decision=outcome.decision + (" (early)" if early else ""),
                    crossed=sequential_sweep.crossed(outcome),
                    p_stagewise=_p(outcome.p_stagewise),
                    p_holm=_p(stats["p_holm"]),
                )
            rows.append(row)
        return rows

    def runs_text(self):
        """How many runs the sweep stored, against the fixed design's."""
        cells = [c for t in self.tables for c in t.cells.values()]
        seeds = len(self.plan.seeds)
        stored = sum(
            min(c.stats["n_ours"] + c.stats["n_failed"], seeds) for c in cells
        )
        planned = len(cells) * seeds
        return (
            f"Runs: {stored} of the fixed design's {planned} "
            f"({stored / planned:.2f})."
        )

    def text(self):
        """The section for a terminal."""
        lines = ["", textwrap.fill(self.design_text(), 79)]
        header = [h for _, h in _COLUMNS]
        for table in self.tables:
            body = [[r[k] for k, _ in _COLUMNS] for r in self.rows(table)]
            widths = [max(map(len, column)) for column in zip(header, *body)]
            rendered = []
            for texts in [header, *body]:
                cells = [t.ljust(w) for t, w in zip(texts, widths)]
                cells[1] = texts[1].rjust(widths[1])  # n
                rendered.append("  ".join(cells).rstrip())
            rendered.insert(1, "-" * len(rendered[0]))
            lines += ["", table.title, *rendered]
        return "\n".join([*lines, self.runs_text()]) + "\n"

    def markdown(self):
        """The section in Markdown."""
        lines = ["", "## Sequential design", "", self.design_text()]
        for table in self.tables:
            lines += ["", f"**{table.title}**" if table.title else "", ""]
            lines += [
                "| " + " | ".join(h for _, h in _COLUMNS) + " |",
                "|---|---:|---|---|---:|---:|",
            ]
            lines += [
                "| " + " | ".join(r[k] for k, _ in _COLUMNS) + " |"
                for r in self.rows(table)
            ]
        return "\n".join([*lines, "", self.runs_text()]) + "\n"

    def write_csv(self, path):
        """Every compared configuration's last look and decision."""
        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(_CSV_COLUMNS)
            for table in self.tables:
                for row in self.rows(table):
                    if row["outcome"] is not None:
                        writer.writerow(self._csv_row(table, row))

    def _csv_row(self, table, row):
        outcome, stats = row["outcome"], row["stats"]
        look = outcome.history[-1] if outcome.history else None
        return [
            table.title, row["configuration"], outcome.config_key,
            outcome.base_key, len(outcome.history), outcome.n,
            outcome.decision, _early(outcome, len(self.plan.design.looks)),
            *((look.t, look.p, look.z) if look else ("", "", "")),
            "" if outcome.bound is None else outcome.bound,
            outcome.p_stagewise, stats["p_holm"], stats["significant_holm"],
        ]  # fmt: skip

    def write(self, out_dir, paths):
        """Writes sequential.csv and the plots, appends the section to
        report.md, and returns the terminal text. `paths` (`report.
        write_report`'s) gains "sequential_csv" and the plots."""
        paths["sequential_csv"] = os.path.join(out_dir, "sequential.csv")
        self.write_csv(paths["sequential_csv"])
        with open(paths["markdown"], "a", encoding="utf-8") as f:
            f.write(self.markdown())
        if importlib.util.find_spec("matplotlib"):
            taken = {os.path.basename(p) for p in paths["plots"]}
            for table in self.tables:
                if not any(r["outcome"] for r in self.rows(table)):
                    continue
                name = report_plots.plot_name(table, taken, "sequential")
                taken.add(name)
                paths["plots"].append(os.path.join(out_dir, name))
                self.figure(table).savefig(paths["plots"][-1], dpi=150)
        return self.text()

    def figure(self, table):
        """Each configuration's z at every look it took, against the
        bounds, one panel per column (learning rate). A configuration
        stopped before the last look is marked where it stopped (triangle
        up: efficacy, down: futility) and labelled with its decision."""
        design = self.plan.design
        looks = list(design.looks)
        rows = [r for r in self.rows(table) if r["outcome"]]
        columns = sorted({r["column"] for r in rows})
        fig = report_plots.agg_figure((8, 1.2 + 3.0 * len(columns)))
        axes = fig.subplots(len(columns), 1, squeeze=False)[:, 0]
        futility = [
            (n, float(sequential.z_from_t(design.futility(k), n)))
            for k, n in enumerate(looks)
            if design.futility(k) is not None
        ]
        for ax, j in zip(axes, columns):
            ax.plot(looks, design.efficacy_z, "k--", lw=1, label="efficacy")
            if futility:
                ax.plot(*zip(*futility), "k:", lw=1, label="futility (as z)")
            for k, row in enumerate(rows):
                if row["column"] == j:
                    _course(ax, row, f"C{k % 10}", len(looks))
            ax.axhline(0.0, color="gray", lw=0.5)
            ax.set_xticks(looks)
            ax.set_xlim(0, looks[-1] + 0.15 * looks[-1])
            ax.set_ylabel("z of the look's t-test")
            ax.set_title(table.column_labels[j], fontsize=9, loc="left")
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=7, loc="upper left")
        axes[-1].set_xlabel("seed pairs at the look")
        what = report_plots.subject(table)
        fig.suptitle(
            f"{what + ': ' if what else ''}the z of each look against the "
            "bounds; stopped early: triangle (up: efficacy, down: futility)",
            fontsize=9,
        )
        return fig


def _course(ax, row, color, looks):
    """One configuration's looks; its stop marked when early."""
    outcome = row["outcome"]
    n = [look.n for look in outcome.history]
    z = [max(-_Z_CLIP, min(_Z_CLIP, look.z)) for look in outcome.history]
    label = row["configuration"].rsplit(", ", 1)[0]
    ax.plot(n, z, "-o", color=color, ms=3, lw=1, label=label)
    if _early(outcome, looks):
        marker = "^" if outcome.decision == sequential.EFFICACY else "v"
        ax.plot(n[-1], z[-1], marker, color=color, ms=10, mec="black")
        ax.annotate(
            f"{outcome.decision} at n={outcome.n}", (n[-1], z[-1]),
            xytext=(7, 0), textcoords="offset points", fontsize=7,
            va="center",
        )  # fmt: skip


def _early(outcome, looks):
    """Whether a configuration stopped before the last of `looks` looks."""
    stopped = outcome.decision in (sequential.EFFICACY, sequential.FUTILITY)
    return stopped and len(outcome.history) < looks


def _p(value):
    return "–" if value is None or math.isnan(value) else f"{value:.3g}"
