"""The figures of a report table (matplotlib, Agg): does c beat BASE, and
how surely.

`accuracy_vs_gamma_figure`: each configuration's accuracy beside BASE's.
`paired_difference_figure`: per configuration, the mean of ours - BASE
over the seeds both ran (Section 4.3's pairing), so a small significant
gain shows even when the learning rates' accuracies lie far apart.
"""

import math
import os

import scipy.stats

from keras_bninit.harness.config import format_value as _fmt
from keras_bninit.harness.display_names import named
from keras_bninit.harness.stats import IDENTICAL_RUNS

CONFIDENCE = 0.95


def write_plots(table, out_dir, taken):
    """Writes a table's figures to `out_dir`: accuracy vs c (tables with
    `row_key="gamma"`), then the paired differences to BASE.

    Args:
        table: a `report.Table`.
        out_dir: the report's folder.
        taken: the file names already written (updated).

    Returns:
        The paths written, in that order.
    """
    figures = []
    if table.row_key == "gamma" and not all(table.is_base_row):
        figures.append(("accuracy_vs_gamma", accuracy_vs_gamma_figure(table)))
    if _any_paired(table):  # nothing compared (--no-base): no figure
        figures.append(("paired_difference", paired_difference_figure(table)))
    paths = []
    for kind, figure in figures:
        name = plot_name(table, taken, kind)
        taken.add(name)
        paths.append(os.path.join(out_dir, name))
        figure.savefig(paths[-1], dpi=150)
    return paths


def plot_accuracy_vs_gamma(table, path, ylabel="test accuracy (%)"):
    """Writes `accuracy_vs_gamma_figure(table, ylabel)` to `path` (PNG).

    Args:
        table: a `report.Table` built with `row_key="gamma"`.
        path: the PNG file to write.
        ylabel: the y axis label.

    Returns:
        `path`.
    """
    figure = accuracy_vs_gamma_figure(table, ylabel)
    figure.savefig(path, dpi=150)
    return path


def accuracy_vs_gamma_figure(table, ylabel="test accuracy (%)"):
    """Test accuracy against c, per learning rate, beside BASE.

    Every point is a configuration's mean over its seeds with the 95 % t
    confidence interval of that mean; a star marks a configuration better
    than BASE (the table's decision: one-sided paired t-test, raw or
    Holm-adjusted p <= the significance level). BASE is a dashed line in
    a band of its own 95 % interval. With several values of c: one line
    per learning rate over a log c axis, BASE's band across it. With one
    value of c: per learning rate, the configuration on its BASE's band,
    labelled with its p-value ("n.s." above the significance level). The
    title is one line (data set, model, seeds); the y axis fits the
    intervals, not 0-100 (`paired_difference_figure` shows the gains
    themselves). Uses matplotlib's Agg canvas (no display, no pyplot
    state).
    """
    if table.row_key != "gamma":
        raise ValueError(
            f'The plot needs a table with row_key="gamma". '
            f"Received: row_key={table.row_key!r}"
        )
    fig = agg_figure((7, 4.8))
    ax = fig.add_subplot()
    gammas = sorted(
        {
            float(r["gamma"])
            for r, b in zip(table.rows, table.is_base_row)
            if not b
        }
    )
    draw = _side_by_side if len(gammas) == 1 else _over_gamma
    extent, band_of, any_star, room = draw(ax, table, gammas)
    if extent:  # the intervals, a little room, within what is possible
        low, high = min(extent), max(extent)
        pad = max(0.1 * (high - low), 0.5 * 10.0**-table.decimals)
        ax.set_ylim(max(low - pad, 0.0), min(high + pad * room, table.scale))
    ax.set_ylabel(ylabel)
    ax.set_title(_title(table), fontsize=9)
    ax.grid(True, axis="y", alpha=0.3)
    _legend(ax, band_of, any_star, _star_label(_test_name(table), table.alpha))
    return fig


def agg_figure(size):
    """A matplotlib `Figure` of `size` inches on the Agg canvas (no
    display, no pyplot state), constrained layout."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _interval(cell):
    """(mean, half-width of its 95 % t interval) of a cell."""
    n = cell.stats["n_ours"]
    if n < 2 or math.isnan(cell.std):
        return cell.mean, 0.0
    t = scipy.stats.t.ppf(0.5 + CONFIDENCE / 2, n - 1)
    return cell.mean, t * cell.std / math.sqrt(n)


def _cells(table, j):
    """(gamma or None for BASE, row fields, cell) of column j."""
    for i, row in enumerate(table.rows):
        cell = table.cells.get((i, j))
        if cell is not None and not math.isnan(cell.mean):
            base = table.is_base_row[i]
            yield (None if base else float(row["gamma"])), row, cell


def _over_gamma(ax, table, gammas):
    """Accuracy vs log c per learning rate; BASE bands."""
    _, varying = _series_fields(table)
    extent, band_of, any_star = [], {}, False
    for j, label in enumerate(table.column_labels):
        color = f"C{j % 10}"
        series = {}
        for gamma, row, cell in _cells(table, j):
            mean, half = _interval(cell)
            extent += [mean - half, mean + half]
            if gamma is None:
                line, band_of[line] = _base_band(ax, mean, half, color, label)
                continue
            name = tuple((f, row[f]) for f in varying)
            series.setdefault(name, []).append((gamma, cell))
        # nudge each learning rate sideways so the bars do not overlap
        dodge = 10 ** (0.012 * (j - (len(table.columns) - 1) / 2))
        for k, (name, points) in enumerate(sorted(series.items())):
            extra = ", ".join(named(f, v) for f, v in name)
            points.sort(key=lambda p: p[0])
            x = [g * dodge for g, _ in points]
            style = ["-", ":", "-."][k % 3]
            any_star |= _points(
                ax, x, [c for _, c in points], color,
                f"{label}, {extra}" if extra else label, style,
            )  # fmt: skip
    ax.set_xscale("log")
    ax.set_xticks(gammas, [_fmt(g) for g in gammas])
    ax.set_xlim(gammas[0] / 1.6, gammas[-1] * 1.6)
    ax.minorticks_off()
    ax.set_xlabel("c (the initial value of the BN scales)")
    return extent, band_of, any_star, 1.0


def _side_by_side(ax, table, gammas):
    """One c: per learning rate, the configuration on its BASE's band,
    with its p-value."""
    extent, band_of, any_star, ticks = [], {}, False, []
    for j, label in enumerate(table.column_labels):
        color = f"C{j % 10}"
        for gamma, _, cell in _cells(table, j):
            mean, half = _interval(cell)
            extent += [mean - half, mean + half]
            if gamma is None:
                span = (j - 0.4, j + 0.4)
                line, band_of[line] = _base_band(
                    ax, mean, half, color, label, span
                )
                continue
            ticks.append((j, f"{named('gamma', gamma)}\n{label}"))
            any_star |= _points(ax, [j], [cell], color, None, "none")
            text = _p_label(table, cell)
            if text:
                ax.annotate(
                    text, (j, mean + half), xytext=(0, 4), ha="center",
                    textcoords="offset points", fontsize=8,
                )  # fmt: skip
    ax.set_xticks([x for x, _ in ticks], [t for _, t in ticks])
    ax.set_xlim(-0.6, len(table.columns) - 0.4)
    return extent, band_of, any_star, 3.0  # room above for the p labels


def _base_band(ax, mean, half, color, label, span=None):
    """BASE: a dashed line at its mean in the band of its mean's 95 % t
    interval, across the axes or over `span` (x from, to)."""
    from matplotlib.patches import Rectangle

    name = f"BASE, {label} (band: 95 % CI)"
    style = {"color": color, "linestyle": "--", "linewidth": 1}
    if span is None:
        band = ax.axhspan(
            mean - half, mean + half, color=color, alpha=0.1, lw=0
        )
        return ax.axhline(mean, label=name, **style), band
    band = ax.add_patch(
        Rectangle(
            (span[0], mean - half), span[1] - span[0], 2 * half,
            color=color, alpha=0.1, linewidth=0,
        )
    )  # fmt: skip
    (line,) = ax.plot(span, [mean, mean], label=name, **style)
    return line, band


def _test_name(table):
    holm = "Holm-adjusted " if table.decision == "holm" else ""
    return f"{holm}{table.test}"


def _p_label(table, cell):
    """The p-value that decides the cell's mark, naming its test, and
    "n.s." above the significance level (None: no test)."""
    stats = cell.stats
    if stats["is_base"]:
        return None
    if stats["identical"]:
        return f"{_test_name(table)}\n{IDENTICAL_RUNS}, n.s."
    p = stats["p_holm" if table.decision == "holm" else "p_value"]
    if math.isnan(p):
        return None
    verdict = f" <= {table.alpha:g}" if cell.bold else ", n.s."
    return f"{_test_name(table)}\np = {p:.3g}{verdict}"


def _points(ax, x, cells, color, label, linestyle, marker="o"):
    """Means with 95 % intervals; stars on the significant ones."""
    means, halves = zip(*(_interval(c) for c in cells))
    ax.errorbar(
        x, means, yerr=halves, color=color, marker=marker, capsize=3,
        linestyle=linestyle, label=label,
    )  # fmt: skip
    stars = [(xi, c.mean) for xi, c in zip(x, cells) if c.bold]
    if stars:
        ax.plot(*zip(*stars), color=color, **_STAR)
    return bool(stars)


_STAR = {
    "linestyle": "none",
    "marker": "*",
    "markersize": 12,
    "markeredgecolor": "black",
}


def subject(table):
    """What a table's plots show, for their titles: "digits, resnet8"."""
    return ", ".join(
        _fmt(table.fixed[f]) for f in ("dataset", "model") if f in table.fixed
    )


def _range(counts):
    fewest, most = min(counts), max(counts)
    return f"{most}" if fewest == most else f"{fewest}-{most}"


def _title(table):
    """One line: data set, model, seeds per point."""
    what, seeds = subject(table), _range(table.seed_counts())
    return f"{what + ': ' if what else ''}{seeds} seeds per point, 95 % CI"


def _legend(ax, band_of, any_star, star_label):
    from matplotlib.lines import Line2D

    handles, labels = ax.get_legend_handles_labels()
    handles = [(band_of[h], h) if h in band_of else h for h in handles]
    if any_star:
        handles.append(Line2D([], [], color="gray", **_STAR))
        labels.append(star_label)
    if handles:
        ax.legend(handles, labels, fontsize=8, loc="best")


def _star_label(test, alpha):
    return f"better than BASE: {test}, p <= {alpha:g}"


def _series_fields(table):
    plain = [r for r, b in zip(table.rows, table.is_base_row) if not b]
    fields = [f for f in (plain[0] if plain else {}) if f != "gamma"]
    varying = [f for f in fields if len({repr(r[f]) for r in plain}) > 1]
    return fields, varying


# ---------------------------------------------------------------------------
# The paired difference to BASE
# ---------------------------------------------------------------------------


def paired_difference_figure(
    table, xlabel="ours - BASE, test accuracy (percentage points)"
):
    """The mean paired difference to BASE per configuration, and how sure.

    One panel per learning rate (the table's columns), each with its own
    x axis, so a gain of a few tenths of a point at one learning rate is
    not squeezed by losses of tens of points at another. One row per
    configuration that is not BASE, in the order of the report's
    statistics table: the mean over the seeds both ran of ours - BASE
    (paired by seed, Section 4.3) with its 95 % t interval, exactly the
    report's `mean_difference`, `ci_low` and `ci_high`
    (`stats.mean_difference_ci`, clipped to what accuracies allow) in the
    table's unit; a line at zero; a star on each configuration better than
    BASE after Holm's correction (`significant_holm`, over the table's
    `holm_family`), whatever the table's bold decision. On the right, the
    same numbers and the Holm-adjusted p, or why a row has none
    ("identical runs", "no BASE runs", ...). Colours are the learning
    rates' of `accuracy_vs_gamma_figure`.

    Args:
        table: a `report.Table` (any `row_key`).
        xlabel: the x axis label.

    Returns:
        A matplotlib `Figure` (Agg canvas); its axes are titled with the
        column labels ("lr=0.1"), their y ticks with the row labels.
    """
    panels = {}
    for i, j, cell in _paired_cells(table):
        panels.setdefault(j, []).append((table.row_labels[i], cell))
    sizes = [len(rows) for rows in panels.values()] or [1]
    fig = agg_figure((8, 0.9 + sum(0.45 + 0.4 * n for n in sizes)))
    axes = fig.subplots(len(sizes), 1, squeeze=False, height_ratios=sizes)
    pairs, any_star = [], False
    for ax, (j, rows) in zip(axes[:, 0], sorted(panels.items())):
        pairs += [c.stats["n"] for _, c in rows if c.stats["n"] >= 2]
        any_star |= _paired_panel(ax, table, j, rows)
    axes[-1, 0].set_xlabel(xlabel)
    what = subject(table)
    seeds = _range(pairs) if pairs else "no"
    fig.suptitle(
        f"{what + ': ' if what else ''}mean paired difference to BASE over "
        f"{seeds} seed pairs, 95 % t interval",
        fontsize=9,
    )
    if any_star:
        from matplotlib.lines import Line2D

        holm = _star_label(f"Holm-adjusted {table.test}", table.alpha)
        fig.legend(
            [Line2D([], [], color="gray", **_STAR)], [holm], fontsize=8,
            loc="outside lower center",
        )  # fmt: skip
    return fig


def _paired_panel(ax, table, j, rows):
    """One learning rate's configurations against BASE; True if starred."""
    color, scale, d = f"C{j % 10}", table.scale, table.decimals
    extent, notes, starred = [0.0], [], False
    for y, (_, cell) in enumerate(rows):
        stats = cell.stats
        if math.isnan(stats["mean_difference"]):
            notes.append(stats["note"] or "–")
            continue
        mean, low, high = (
            stats[k] * scale for k in ("mean_difference", "ci_low", "ci_high")
        )
        extent += [low, high]
        ax.errorbar(
            [mean], [y], xerr=[[mean - low], [high - mean]], color=color,
            marker="o", capsize=3, linestyle="none",
        )  # fmt: skip
        if stats["significant_holm"]:
            ax.plot([mean], [y], color=color, **_STAR)
            starred = True
        notes.append(
            f"{mean:+.{d}f} [{low:+.{d}f}, {high:+.{d}f}], {_holm_text(stats)}"
        )
    ax.axvline(0.0, color="black", linewidth=1, zorder=1.5)
    low, high = min(extent), max(extent)
    pad = max(0.08 * (high - low), 0.5 * 10.0**-d)
    ax.set_xlim(low - pad, high + pad)
    ax.set_ylim(len(rows) - 0.5, -0.5)  # the first configuration on top
    ax.set_yticks(range(len(rows)), [label for label, _ in rows])
    right = ax.secondary_yaxis("right")
    right.set_yticks(range(len(rows)), notes)
    right.tick_params(labelsize=8)
    ax.set_title(table.column_labels[j], fontsize=9, loc="left")
    ax.grid(True, axis="x", alpha=0.3)
    return starred


def _paired_cells(table):
    """(row, column, cell) of every non-BASE cell, in the order of
    `Table.comparisons()`."""
    return [
        (i, j, cell)
        for (i, j), cell in sorted(table.cells.items())
        if not cell.stats["is_base"]
    ]


def _holm_text(stats):
    if stats["identical"]:
        return IDENTICAL_RUNS
    if math.isnan(stats["p_holm"]):
        return stats["note"] or "–"
    return f"p Holm = {stats['p_holm']:.3g}"


def _any_paired(table):
    return any(
        not math.isnan(c.stats["mean_difference"])
        for _, _, c in _paired_cells(table)
    )


def plot_name(table, taken=(), kind="accuracy_vs_gamma"):
    """A file name that says what the plot shows:
    `<kind>-<dataset>-<model>.png`, e.g. `accuracy_vs_gamma-digits-
    resnet8.png`, `paired_difference-digits-resnet8.png` (`-2`, `-3`, ...
    when the report has several tables of one data set and model)."""
    parts = [
        _fmt(table.fixed[f]) for f in ("dataset", "model") if f in table.fixed
    ]
    stem = "-".join([kind, *parts])
    stem = "".join(c if c.isalnum() or c in "-_." else "-" for c in stem)
    name, k = f"{stem}.png", 1
    while name in taken:
        k += 1
        name = f"{stem}-{k}.png"
    return name
