"""Renderings of report tables: Markdown, LaTeX, plain text and CSV.

`report.build_tables` makes the tables; these functions write them (the
paper's layout, with the comparison of each configuration against its
BASE under each table). `report` re-exports them.
"""

import csv
import dataclasses
import io
import math
import numbers
import textwrap

from keras_bninit.harness.display_names import display_name
from keras_bninit.harness.stats import IDENTICAL_RUNS, MIN_SEEDS_TO_JUDGE

# CSV columns after the table/row/column labels and the config fields.
_CSV_STATS = (
    "config_key",
    "base_key",
    "is_base",
    "n_ours",
    "n_base",
    "n",
    "n_failed",
    "missing_seeds",
    # accuracies from here to ci_high (scaled)
    "mean",
    "std",
    "base_mean",
    "base_std",
    "mean_difference",
    "ci_low",
    "ci_high",
    "t",
    "p_value",
    "significant",
    "p_holm",
    "significant_holm",
    "wilcoxon_p",
    "effect_size_dz",
    "p_outperform",
    "p_outperform_ci_low",
    "p_outperform_ci_high",
    "best_in_column",
    "note",
)
# Accuracy-valued statistics, multiplied by `scale` in the CSV.
_SCALED = frozenset(_CSV_STATS[8:15])  # mean ... ci_high

# The columns of `Table.comparisons()`: key, plain header, LaTeX header.
_COMPARISON_COLUMNS = (
    ("configuration", "configuration", "configuration"),
    ("mean_std", "mean ± std", r"mean $\pm$ std"),
    ("n", "n", "$n$"),
    ("difference", "ours - BASE [95% CI]", r"ours $-$ BASE [95\% CI]"),
    ("dz", "d_z", "$d_z$"),
    ("p", "p (t-test)", "$p$ ($t$-test)"),
    ("p_holm", "p Holm", "$p$ Holm"),
    ("p_wilcoxon", "p Wilcoxon", "$p$ Wilcoxon"),
    ("p_outperform", "P(> BASE)", "$P$($>$ BASE)"),
)
COMPARISON_KEYS = tuple(c[0] for c in _COMPARISON_COLUMNS)


def format_number(value, spec):
    return "–" if value is None or math.isnan(value) else format(value, spec)


def p_text(stats, name):
    """A t-test p-value (`name`: "p_value" or "p_holm") for display."""
    if stats["identical"]:
        return IDENTICAL_RUNS
    return format_number(stats[name], ".3g")


def _comparison_legend(table):
    test = "p Holm" if table.decision == "holm" else "p (t-test)"
    family = {
        "base": "the configurations sharing a BASE",
        "dataset": "the configurations of a data set",
    }.get(table.holm_family, table.holm_family)
    legend = (
        "Each configuration against its BASE, paired by seed: n pairs; "
        "ours - BASE: mean difference and its 95% t interval; d_z: mean "
        f"difference / std of the differences; p (t-test): {table.test} "
        f"(ours > BASE); p Holm: adjusted over {family}; p Wilcoxon: "
        "one-sided signed-rank test; P(> BASE): share of seeds where ours "
        f"is higher (ties half). Marked: {test} <= {table.alpha:g}."
    )
    if any(c.stats["identical"] for c in table.cells.values()):
        legend += (
            f" {IDENTICAL_RUNS}: every paired difference is zero, so the "
            "t-test has no p-value (never marked)."
        )
    few = sorted(
        {
            c.stats["n"]
            for c in table.cells.values()
            if not c.stats["is_base"] and 2 <= c.stats["n"] < MIN_SEEDS_TO_JUDGE
        }
    )
    if few:
        legend += (
            f" Too few seeds to judge: n = {', '.join(map(str, few))} pairs "
            f"(fewer than {MIN_SEEDS_TO_JUDGE}; the paper uses 15), so these "
            "statistics say little."
        )
    return legend


def _decision_key(table):
    return "p_holm" if table.decision == "holm" else "p"


def comparisons_markdown(table):
    """`Table.comparisons()` as a Markdown table; significant p in bold."""
    marked = _decision_key(table)
    lines = [
        "| " + " | ".join(c[1] for c in _COMPARISON_COLUMNS) + " |",
        "|---|" + "---:|" * (len(_COMPARISON_COLUMNS) - 1),
    ]
    for row in table.comparisons():
        texts = [row[k] for k in COMPARISON_KEYS]
        if row["significant"]:
            k = COMPARISON_KEYS.index(marked)
            texts[k] = f"**{texts[k]}**"
        lines.append("| " + " | ".join(texts) + " |")
    return "\n".join([*lines, "", _comparison_legend(table)]) + "\n"


def comparisons_latex(table):
    """`Table.comparisons()` as a booktabs tabular; significant p bold."""
    marked = _decision_key(table)
    lines = [
        r"\begin{tabular}{l" + "r" * (len(_COMPARISON_COLUMNS) - 1) + "}",
        r"\toprule",
        " & ".join(c[2] for c in _COMPARISON_COLUMNS) + r" \\",
        r"\midrule",
    ]
    for row in table.comparisons():
        texts = []
        for key in COMPARISON_KEYS:
            text = row[key]
            if key in ("difference", "dz") and row["compared"]:
                text = f"${text}$" if text != "–" else text
            else:
                text = _latex_escape(text).replace("±", r"$\pm$")
            text = text.replace("–", "--")
            if key == marked and row["significant"]:
                text = rf"\textbf{{{text}}}"
            texts.append(text)
        lines.append(" & ".join(texts) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def comparisons_text(table):
    """`Table.comparisons()` aligned for a terminal; `*` marks p."""
    marked = _decision_key(table)
    header = [c[1] for c in _COMPARISON_COLUMNS]
    body = []
    for row in table.comparisons():
        texts = [row[k] for k in COMPARISON_KEYS]
        k = COMPARISON_KEYS.index(marked)
        texts[k] += "*" if row["significant"] else " "
        body.append(texts)
    widths = [max(len(r[k]) for r in [header, *body]) for k in range(9)]
    lines = [
        "  ".join(
            [r[0].ljust(widths[0])]
            + [t.rjust(w) for t, w in zip(r[1:], widths[1:])]
        ).rstrip()
        for r in [header, *body]
    ]
    lines.insert(1, "-" * len(lines[0]))
    legend = textwrap.fill(_comparison_legend(table), 79)
    return "\n".join([*lines, legend]) + "\n"


def _p_suffix(cell):
    if cell.stats["identical"]:
        return f" ({IDENTICAL_RUNS})"
    p = cell.stats["p_value"]
    return "" if math.isnan(p) else f" (p={p:.3g})"


def to_markdown(table, show_p=False, comparisons=True):
    """The table in Markdown: bold `**`, underline `<u>`.

    Args:
        table: a `Table`.
        show_p: append each cell's raw t-test p-value.
        comparisons: add the statistics of each configuration against its
            BASE (`comparisons_markdown`) below the table.

    Returns:
        A string: a title line, the table, a legend line, and the
        statistics table with its legend.
    """
    header = [display_name(table.row_key), *table.column_labels]
    lines = [
        f"**{table.title}**" if table.title else "",
        "",
        "| " + " | ".join(header) + " |",
        "|---|" + "---:|" * len(table.columns),
    ]
    for i, label in enumerate(table.row_labels):
        texts = []
        for j in range(len(table.columns)):
            cell = table.cells.get((i, j))
            if cell is None:
                texts.append("–")
                continue
            text = table.cell_text(cell)
            if cell.underline:
                text = f"<u>{text}</u>"
            if cell.bold:
                text = f"**{text}**"
            texts.append(text + (_p_suffix(cell) if show_p else ""))
        lines.append("| " + " | ".join([label, *texts]) + " |")
    lines += ["", table.legend()]
    if comparisons:
        lines += ["", comparisons_markdown(table).rstrip("\n")]
    return "\n".join(lines).lstrip("\n") + "\n"


_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "<": r"$<$",
    ">": r"$>$",
}


LATEX_PREAMBLE = (
    "% keras_bninit report. Needs \\usepackage{booktabs} (\\toprule,\n"
    "% \\midrule, \\bottomrule); \\input{report.tex} where the tables go.\n\n"
)


def _latex_escape(text):
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text))


def to_latex(table, comparisons=True):
    """The table as a LaTeX `tabular`: `\\textbf`, `\\underline`.

    Needs `\\usepackage{booktabs}` (`\\toprule`, `\\midrule`,
    `\\bottomrule`) in the document's preamble.

    Args:
        table: a `Table`.
        comparisons: add the statistics of each configuration against its
            BASE (`comparisons_latex`) as a second tabular.

    Returns:
        A string with a `% title` comment line and the tabular(s).
    """
    lines = [
        f"% {_latex_escape(table.title)}",
        r"\begin{tabular}{l" + "r" * len(table.columns) + "}",
        r"\toprule",
        " & ".join(
            _latex_escape(x)
            for x in [display_name(table.row_key), *table.column_labels]
        )
        + r" \\",
        r"\midrule",
    ]
    for i, label in enumerate(table.row_labels):
        if table.is_base_row[i] and (i == 0 or not table.is_base_row[i - 1]):
            lines.append(r"\midrule")
        texts = [_latex_escape(label)]
        for j in range(len(table.columns)):
            cell = table.cells.get((i, j))
            if cell is None:
                texts.append("--")
                continue
            text = table.cell_text(cell, latex=True)
            if cell.underline:
                text = rf"\underline{{{text}}}"
            if cell.bold:
                text = rf"\textbf{{{text}}}"
            texts.append(text)
        lines.append(" & ".join(texts) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    if comparisons:
        lines += [
            "",
            "% " + _latex_escape(_comparison_legend(table)),
            comparisons_latex(table).rstrip("\n"),
        ]
    return "\n".join(lines) + "\n"


def to_text(table, show_p=False, comparisons=True):
    """The table for a terminal: `*` marks bold, `^` underline.

    Args:
        table: a `Table`.
        show_p: append each cell's raw t-test p-value.
        comparisons: add the statistics of each configuration against its
            BASE (`comparisons_text`) below the table.

    Returns:
        A string with aligned columns, a title line and a legend.
    """
    header = [display_name(table.row_key), *table.column_labels]
    body = []
    for i, label in enumerate(table.row_labels):
        texts = [label]
        for j in range(len(table.columns)):
            cell = table.cells.get((i, j))
            if cell is None:
                texts.append("-")
                continue
            marks = ("*" if cell.bold else "") + ("^" if cell.underline else "")
            suffix = _p_suffix(cell) if show_p else ""
            texts.append(f"{table.cell_text(cell)}{marks}{suffix}")
        body.append(texts)
    widths = [
        max(len(r[k]) for r in [header, *body]) for k in range(len(header))
    ]

    def line(texts):
        first = texts[0].ljust(widths[0])
        rest = [t.rjust(w) for t, w in zip(texts[1:], widths[1:])]
        return "  ".join([first, *rest]).rstrip()

    legend = table.legend().replace("bold:", "*:").replace("underlined:", "^:")
    lines = [table.title, line(header), "-" * len(line(header))]
    lines += [line(texts) for texts in body]
    lines.append(textwrap.fill(legend, 79))
    if comparisons:
        lines += ["", comparisons_text(table).rstrip("\n")]
    return "\n".join(lines) + "\n"


def to_csv(tables, path=None, scale=100.0):
    """Every comparison of `tables` as CSV, one line per cell.

    Columns: table title, row and column labels, the method fields, then
    config_key, base_key, is_base, n_ours, n_base, n (pairs), n_failed,
    missing_seeds, mean, std, base_mean, base_std, mean_difference, ci_low,
    ci_high (those seven times `scale`: percent), t, p_value ("identical
    runs" for identical runs), significant (raw), p_holm (likewise),
    significant_holm, wilcoxon_p, effect_size_dz,
    p_outperform, p_outperform_ci_low, p_outperform_ci_high, best_in_column,
    note.

    Args:
        tables: a `Table` or a list of them.
        path: file to write; None returns the text instead.
        scale: the factor the tables used for accuracies.

    Returns:
        The CSV text (also when written to `path`).
    """
    if dataclasses.is_dataclass(tables):  # one `Table`
        tables = [tables]
    # the config fields of each cell: fixed ones, the column's, the row's
    fields = list(
        dict.fromkeys(
            f
            for t in tables
            for f in [*t.fixed, t.col_key, *(t.rows[0] if t.rows else ())]
        )
    )
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["table", "row", "column", *fields, *_CSV_STATS])
    for table in tables:
        for (i, j), cell in sorted(table.cells.items()):
            stats = cell.stats
            values = []
            for name in _CSV_STATS:
                if name == "best_in_column":
                    value = cell.underline
                elif name in ("p_value", "p_holm") and stats["identical"]:
                    value = IDENTICAL_RUNS
                elif name == "missing_seeds":
                    value = " ".join(str(s) for s in stats[name])
                else:
                    value = stats[name]
                if name in _SCALED:
                    value = value * scale
                values.append(_csv_value(name, value))
            writer.writerow(
                [
                    table.title,
                    table.row_labels[i],
                    table.column_labels[j],
                    *[
                        _csv_value(f, _csv_field(table, i, j, f))
                        for f in fields
                    ],
                    *values,
                ]
            )
    text = out.getvalue()
    if path is not None:
        with open(path, "w", newline="", encoding="utf-8") as f:
            f.write(text)
    return text


# Counts and integer configuration fields: written as integers ("180", not
# "180.0"; stored configurations hold every number as a float).
_INTEGER_FIELDS = frozenset(
    {
        "n_ours",
        "n_base",
        "n",
        "n_failed",
        "epochs",
        "batch_size",
        "seed",
        "precise_bn",
    }
)


def _csv_value(name, value):
    if (
        name in _INTEGER_FIELDS
        and isinstance(value, numbers.Real)
        and not isinstance(value, bool)
        and float(value).is_integer()
    ):
        return int(value)
    return value


def _csv_field(table, i, j, field):
    if field in table.rows[i]:
        return table.rows[i][field]
    if field == table.col_key:
        return table.columns[j]
    return table.fixed.get(field, "")
