"""Paper-style tables and plots from result records (Sections 4.3, 4.4).

The table layout of the paper: one row per value of c (+ a BASE row), one
column per learning rate, cells "mean ± std" of test accuracy in percent
over the seeds. A cell is bold when the configuration is significantly
better than its BASE (one-sided paired t-test, p <= 0.05) and underlined
when its mean is the highest of its column. A cell shows "(n=k)" when it
has fewer seeds than the other cells compared with the same BASE, so
missing seeds are never hidden.

Rows can be keyed by another field (`row_key="bn"` for the related-methods
table, `"input_norm"`, `"model"`); every field that is neither the row key,
a method field (gamma, divisor, bn, input_norm) nor the column key splits
the records into separate tables (one per data set, model, epochs, ...).

Renderings (`report_render`, re-exported here): Markdown, LaTeX, CSV
(every statistic of `harness.stats`) and plain text;
`report_plots.write_plots` draws accuracy vs c and the paired differences
to BASE (PNG). Labels say c and a (`display_names`).

Identical runs (every paired difference zero) have no t-test p-value (NaN,
as scipy gives): every rendering prints "identical runs" where that p and
its Holm-adjusted value would stand, the CSV's `p_value` and `p_holm`
columns included. Their Wilcoxon p-value (1, defined) is printed as a
number, and d_z (0 / 0) as "–".
"""

import dataclasses
import importlib.util
import math
import numbers
import os

import keras_bninit.harness.sequential_report as sequential_report
from keras_bninit.harness import _io, report_inputs, report_plots
from keras_bninit.harness.display_names import named
from keras_bninit.harness.report_render import (  # the renderings: report.to_*
    COMPARISON_KEYS,
    LATEX_PREAMBLE,
    comparisons_latex,  # noqa: F401
    comparisons_markdown,  # noqa: F401
    comparisons_text,  # noqa: F401
    format_number,
    p_text,
    to_csv,
    to_latex,
    to_markdown,
    to_text,
)
from keras_bninit.harness.stats import ALPHA
from keras_bninit.harness.stats_records import compare_records
from keras_bninit.harness.store import canonical_config, record_backends

# Fields that tell the compared methods apart: they always go into the row.
METHOD_FIELDS = ("gamma", "gamma_lr_divisor", "bn", "input_norm")


@dataclasses.dataclass
class Cell:
    """One table cell.

    Attributes:
        stats: the configuration's row from `stats_records.compare_records`.
        mean, std: in the table's unit (percent by default).
        show_n: whether the cell shows its number of seeds.
        bold: significantly better than BASE.
        underline: the highest displayed mean of its column.
    """

    stats: dict
    mean: float
    std: float
    show_n: bool = False
    bold: bool = False
    underline: bool = False


@dataclasses.dataclass
class Table:
    """One paper-style table.

    Attributes:
        fixed: the fields shared by every cell (data set, model, ...).
        row_key: the field that labels the rows.
        col_key: the field that labels the columns.
        rows: one dict of method-field values per row, BASE rows last.
        row_labels: e.g. "c=0.1", "BASE" (`display_names`).
        is_base_row: whether each row is a BASE configuration.
        columns: the column values (learning rates, largest first).
        cells: `(row_index, column_index) -> Cell`; absent when not run.
        common: fields shared by every non-BASE row but not shown per row.
        decimals, alpha, decision: how cells were formatted and marked.
        scale: the factor applied to accuracies (100: percent).
        holm_family: the family of Holm's correction ("base", "dataset").
        test: the test behind p and bold (a sequential sweep's differs).
    """

    fixed: dict
    row_key: str
    col_key: str
    rows: list
    row_labels: list
    is_base_row: list
    columns: list
    cells: dict
    common: dict
    decimals: int
    alpha: float
    decision: str
    scale: float = 100.0
    holm_family: str = "base"
    test: str = "one-sided paired t-test"

    @property
    def title(self):
        """The fields shared by the table, e.g. "dataset=cifar10, ..."."""
        return ", ".join(named(k, v) for k, v in self.fixed.items())

    @property
    def column_labels(self):
        return [named(self.col_key, v) for v in self.columns]

    def cell_text(self, cell, latex=False):
        """The cell as "mean ± std", plus "(n=k)" when due."""
        d = self.decimals
        text = f"{cell.mean:.{d}f}"
        if not math.isnan(cell.std):
            pm = r"$\pm$" if latex else "±"
            text += f" {pm} {cell.std:.{d}f}"
        if cell.show_n:
            n = cell.stats["n_ours"]
            text += f" ($n={n}$)" if latex else f" (n={n})"
        return text

    def seed_counts(self):
        """(fewest, most) seeds of a cell of this table."""
        counts = [c.stats["n_ours"] for c in self.cells.values()]
        return (min(counts), max(counts)) if counts else (0, 0)

    def comparisons(self):
        """One row of statistics per configuration, in table order.

        Each row is a dict of display strings: "configuration", "mean_std",
        "n" (pairs with BASE; a BASE row its seeds), "difference" (mean of
        ours - BASE with its 95 % t interval, in the table's unit), "dz"
        (Cohen's d_z), "p" (one-sided paired t-test; "identical runs" when
        every paired difference is zero, and then "p_holm" too), "p_holm",
        "p_wilcoxon", "p_outperform" (P(ours > BASE)), plus "significant"
        (by the table's decision), "is_base" and "compared" (whether the
        statistics exist: False for BASE rows and rows without a BASE).
        """
        d = self.decimals
        rows = []
        for i, label in enumerate(self.row_labels):
            for j, column in enumerate(self.column_labels):
                cell = self.cells.get((i, j))
                if cell is None:
                    continue
                s = cell.stats
                mean_std = f"{cell.mean:.{d}f}"
                if not math.isnan(cell.std):
                    mean_std += f" ± {cell.std:.{d}f}"
                row = {
                    "configuration": f"{label}, {column}",
                    "mean_std": mean_std,
                    "n": str(s["n_ours"] if s["is_base"] else s["n"]),
                    "is_base": bool(s["is_base"]),
                    "significant": cell.bold,
                    "compared": False,
                }
                if s["is_base"] or math.isnan(s["mean_difference"]):
                    note = "BASE" if s["is_base"] else s["note"] or "–"
                    row.update(dict.fromkeys(COMPARISON_KEYS[3:], "–"))
                    row["difference"] = note
                else:
                    scale = self.scale
                    row.update(
                        compared=True,
                        difference=f"{s['mean_difference'] * scale:+.{d}f} "
                        f"[{s['ci_low'] * scale:+.{d}f}, "
                        f"{s['ci_high'] * scale:+.{d}f}]",
                        dz=format_number(s["effect_size_dz"], ".2f"),
                        p=p_text(s, "p_value"),
                        p_holm=p_text(s, "p_holm"),
                        p_wilcoxon=format_number(s["wilcoxon_p"], ".3g"),
                        p_outperform=format_number(s["p_outperform"], ".2f"),
                    )
                rows.append(row)
        return rows

    def legend(self):
        """What bold, underline and n mean in this table."""
        test = "Holm-corrected " if self.decision == "holm" else ""
        parts = [
            f"bold: better than BASE, {test}{self.test} p <= {self.alpha:g}",
            "underlined: best mean of the column",
            "n: seeds, shown when fewer than the cells compared with the "
            "same BASE",
        ]
        if self.common:
            common = ", ".join(named(k, v) for k, v in self.common.items())
            parts.insert(0, f"rows other than BASE: {common}")
        return "; ".join(parts) + "."


# ---------------------------------------------------------------------------
# Building tables
# ---------------------------------------------------------------------------


def _sort_key(value):
    # numbers before strings, None last; never compares across types
    if value is None:
        return (2, 0.0, "")
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return (0, float(value), "")
    return (1, 0.0, str(value))


def _as_records(records, metric="test_accuracy"):
    # checked: a store read-only, rows and values named (report_inputs)
    return report_inputs.load(records, metric)


def build_tables(
    records,
    row_key="gamma",
    col_key="lr",
    metric="test_accuracy",
    scale=100.0,
    decimals=2,
    alpha=ALPHA,
    decision="raw",
    baseline=None,
    holm_family="base",
    seed=0,
):
    """Groups result records into paper-style tables.

    Args:
        records: result records (a list of dicts), a `ResultStore` or
            a store's path; checked first (`report_inputs.load`).
        row_key: the config field that labels rows ("gamma", "bn",
            "input_norm", "model", ...).
        col_key: the config field of the columns ("lr").
        metric: the record field tabulated.
        scale: multiplies accuracies for display (100: percent).
        decimals: decimals of means and standard deviations.
        alpha: significance level.
        decision: bold cells by the "raw" p-value (the paper) or by the
            "holm"-corrected one.
        baseline, holm_family, seed: passed to `stats_records.compare_records`.

    Returns:
        A list of `Table`, sorted by their fixed fields.
    """
    if decision not in ("raw", "holm"):
        raise ValueError(
            f'`decision` must be "raw" or "holm". Received: {decision!r}'
        )
    if row_key == col_key:
        raise ValueError(
            f"`row_key` and `col_key` must differ. Received: {row_key!r}"
        )
    comparisons = compare_records(
        _as_records(records, metric),
        metric=metric,
        alpha=alpha,
        baseline=baseline,
        holm_family=holm_family,
        seed=seed,
    )
    row_fields = tuple(dict.fromkeys((row_key, *METHOD_FIELDS)))
    groups = {}
    for comparison in comparisons:
        config = canonical_config(comparison["config"])
        fixed = {
            k: v
            for k, v in config.items()
            if k not in row_fields and k != col_key
        }
        # data set and model first, as a table's caption would name them
        fixed = {
            **{k: fixed[k] for k in ("dataset", "model") if k in fixed},
            **fixed,
        }
        fixed_id = tuple(sorted((k, repr(v)) for k, v in fixed.items()))
        group = groups.setdefault(fixed_id, (fixed, []))
        group[1].append((config, comparison))
    options = {
        "row_key": row_key,
        "col_key": col_key,
        "decimals": decimals,
        "alpha": alpha,
        "decision": decision,
        "scale": scale,
        "holm_family": holm_family,
    }
    return [
        _build_table(fixed, members, row_fields, scale, options)
        for _, (fixed, members) in sorted(groups.items())
    ]


def _build_table(fixed, members, row_fields, scale, options):
    """One `Table`; `options` are the `Table` fields given by the caller."""
    row_key, col_key = options["row_key"], options["col_key"]
    decision, decimals = options["decision"], options["decimals"]
    rows, is_base, columns = {}, {}, set()
    for config, comparison in members:
        row = tuple(config.get(f) for f in row_fields)
        rows[row] = dict(zip(row_fields, row))
        is_base[row] = is_base.get(row, False) or comparison["is_base"]
        columns.add(config.get(col_key))
    order = sorted(
        rows,
        key=lambda r: (is_base[r], [_sort_key(v) for v in r]),
    )
    columns = sorted(columns, key=_sort_key, reverse=True)
    row_index = {r: i for i, r in enumerate(order)}
    col_index = {c: j for j, c in enumerate(columns)}

    cells = {}
    for config, comparison in members:
        row = tuple(config.get(f) for f in row_fields)
        significant = comparison[
            "significant" if decision == "raw" else "significant_holm"
        ]
        cells[row_index[row], col_index[config.get(col_key)]] = Cell(
            stats=comparison,
            mean=comparison["mean"] * scale,
            std=comparison["std"] * scale,
            bold=bool(significant),
        )
    _mark_n(cells)
    _mark_best(cells, decimals)

    labels, common = _row_labels(
        [rows[r] for r in order], [is_base[r] for r in order], row_key
    )
    return Table(
        fixed=fixed,
        rows=[rows[r] for r in order],
        row_labels=labels,
        is_base_row=[is_base[r] for r in order],
        columns=columns,
        cells=cells,
        common=common,
        **options,
    )


def _mark_n(cells):
    """Shows n where a cell has fewer seeds than others of its BASE group."""
    most = {}
    for cell in cells.values():
        key = cell.stats["base_key"]
        most[key] = max(most.get(key, 0), cell.stats["n_ours"])
    for cell in cells.values():
        stats = cell.stats
        fewer = stats["n_ours"] < most[stats["base_key"]]
        fewer_than_base = not stats["is_base"] and (
            stats["n_ours"] < stats["n_base"] or stats["n_base"] == 0
        )
        cell.show_n = fewer or fewer_than_base


def _mark_best(cells, decimals):
    """Underlines the highest displayed mean of each column (ties: all)."""
    best = {}
    for (_, j), cell in cells.items():
        if not math.isnan(cell.mean):
            best[j] = max(best.get(j, -math.inf), round(cell.mean, decimals))
    for (_, j), cell in cells.items():
        cell.underline = (
            not math.isnan(cell.mean) and round(cell.mean, decimals) == best[j]
        )


def _row_labels(rows, is_base, row_key):
    """Labels rows by row_key plus the method fields that vary among them."""
    others = [f for f in rows[0] if f != row_key] if rows else []
    plain = [r for r, b in zip(rows, is_base) if not b]
    bases = [r for r, b in zip(rows, is_base) if b]
    varying = [f for f in others if len({repr(r[f]) for r in plain}) > 1]
    common = {
        f: plain[0][f]
        for f in others
        if plain
        and f not in varying
        and bases
        and all(repr(plain[0][f]) != repr(b[f]) for b in bases)
    }
    base_varying = (
        [f for f in rows[0] if len({repr(r[f]) for r in bases}) > 1]
        if rows
        else []
    )
    labels = []
    for row, base in zip(rows, is_base):
        if base:
            extra = ", ".join(named(f, row[f]) for f in base_varying)
            labels.append(f"BASE ({extra})" if extra else "BASE")
        else:
            label = named(row_key, row[row_key])
            extra = ", ".join(named(f, row[f]) for f in varying)
            labels.append(f"{label} ({extra})" if extra else label)
    return labels, common


# ---------------------------------------------------------------------------
# Everything at once
# ---------------------------------------------------------------------------


def write_report(records, out_dir, row_key="gamma", col_key="lr", **kwargs):
    """Writes report.md, report.tex, report.csv and plots to `out_dir`.

    Args:
        records: result records or a `ResultStore`.
        out_dir: the directory (created if missing).
        row_key, col_key, **kwargs: passed to `build_tables`, but for
            `sequential`: a sequential sweep's `Plan` (`sequential_report`).

    Returns:
        `(text, paths)`: the terminal rendering of every table and a dict
        of the files written ("markdown", "latex", "csv", "plots").
    """
    _io.refuse_links(out_dir, "a report's files")  # never written through
    records = _as_records(records, kwargs.get("metric", "test_accuracy"))
    plan = kwargs.pop("sequential", None)
    tables = build_tables(records, row_key=row_key, col_key=col_key, **kwargs)
    section = sequential_report.mark(tables, records, plan)  # None: fixed
    os.makedirs(out_dir, exist_ok=True)  # only once the inputs are good
    header = f"Keras backend: {', '.join(record_backends(records))}\n"
    scale = kwargs.get("scale", 100.0)
    paths = {
        "markdown": os.path.join(out_dir, "report.md"),
        "latex": os.path.join(out_dir, "report.tex"),
        "csv": os.path.join(out_dir, "report.csv"),
        "plots": [],
    }
    with open(paths["markdown"], "w", encoding="utf-8") as f:
        f.write(header + "\n" + "\n".join(to_markdown(t) for t in tables))
    with open(paths["latex"], "w", encoding="utf-8") as f:
        f.write(
            LATEX_PREAMBLE
            + f"% {header}"
            + "\n".join(to_latex(t) for t in tables)
        )
    to_csv(tables, paths["csv"], scale=scale)
    if not importlib.util.find_spec("matplotlib"):
        header += "(no plots: matplotlib is not installed)\n"
    else:  # accuracy vs c (tables by c), then the paired differences
        taken = set()
        for table in tables:
            paths["plots"] += report_plots.write_plots(table, out_dir, taken)
    text = header + "\n".join(to_text(t) for t in tables)
    text += section.write(out_dir, paths) if section else ""
    return text, paths
