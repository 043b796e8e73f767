"""The accuracy figure of a report table (matplotlib, Agg): does c beat
BASE, and how surely."""

import math

import scipy.stats

from keras_bninit.harness.config import format_value as _fmt

CONFIDENCE = 0.95


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
    than BASE (the table's decision: one-sided paired t-test, p <= alpha).
    With several values of c: one line per learning rate over a log c
    axis, and BASE as a dashed line in a band of its own 95 % interval.
    With one value of c: each learning rate's configuration and its BASE
    side by side. The title is one line (data set, model, seeds); the y
    axis fits the intervals. Uses matplotlib's Agg canvas (no display, no
    pyplot state).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if table.row_key != "gamma":
        raise ValueError(
            f'The plot needs a table with row_key="gamma". '
            f"Received: row_key={table.row_key!r}"
        )
    fig = Figure(figsize=(7, 4.8), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    gammas = sorted(
        {
            float(r["gamma"])
            for r, b in zip(table.rows, table.is_base_row)
            if not b
        }
    )
    draw = _side_by_side if len(gammas) == 1 else _over_gamma
    extent, band_of, any_star = draw(ax, table, gammas)
    if extent:  # the intervals, a little room, within what is possible
        low, high = min(extent), max(extent)
        pad = max(0.1 * (high - low), 0.5 * 10.0**-table.decimals)
        ax.set_ylim(max(low - pad, 0.0), min(high + pad, table.scale))
    ax.set_ylabel(ylabel)
    ax.set_title(_title(table), fontsize=9)
    ax.grid(True, axis="y", alpha=0.3)
    _legend(ax, band_of, any_star, table.alpha)
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
                band = ax.axhspan(
                    mean - half, mean + half, color=color, alpha=0.1, lw=0
                )
                line = ax.axhline(
                    mean, color=color, linestyle="--", linewidth=1,
                    label=f"BASE, {label} (band: 95 % CI)",
                )  # fmt: skip
                band_of[line] = band
                continue
            name = tuple((f, row[f]) for f in varying)
            series.setdefault(name, []).append((gamma, cell))
        # nudge each learning rate sideways so the bars do not overlap
        dodge = 10 ** (0.012 * (j - (len(table.columns) - 1) / 2))
        for k, (name, points) in enumerate(sorted(series.items())):
            extra = ", ".join(f"{f}={_fmt(v)}" for f, v in name)
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
    ax.set_xlabel("c (initial BN scale gamma)")
    return extent, band_of, any_star


def _side_by_side(ax, table, gammas):
    """One c: per learning rate, the configuration beside its BASE."""
    extent, any_star, ticks = [], False, []
    for j, label in enumerate(table.column_labels):
        color = f"C{j % 10}"
        for gamma, _, cell in _cells(table, j):
            x = 3 * j + (1 if gamma is None else 0)
            mean, half = _interval(cell)
            extent += [mean - half, mean + half]
            name = "BASE" if gamma is None else f"c={_fmt(gamma)}"
            ticks.append((x, f"{name}\n{label}"))
            any_star |= _points(
                ax, [x], [cell], color, None, "none",
                marker="s" if gamma is None else "o",
            )  # fmt: skip
            p = cell.stats.get("p_value", math.nan)
            if gamma is not None and not math.isnan(p):
                ax.annotate(
                    f"p = {p:.3g}", (x, mean + half), xytext=(0, 4),
                    textcoords="offset points", ha="center", fontsize=8,
                )  # fmt: skip
    ax.set_xticks([x for x, _ in ticks], [t for _, t in ticks])
    ax.set_xlim(-0.8, 3 * len(table.columns) - 1.2)
    return extent, {}, any_star


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


def _title(table):
    """One line: data set, model, seeds per point."""
    fewest, most = table.seed_counts()
    seeds = f"{most}" if fewest == most else f"{fewest}-{most}"
    what = ", ".join(
        _fmt(table.fixed[f]) for f in ("dataset", "model") if f in table.fixed
    )
    return f"{what + ': ' if what else ''}{seeds} seeds per point, 95 % CI"


def _legend(ax, band_of, any_star, alpha):
    from matplotlib.lines import Line2D

    handles, labels = ax.get_legend_handles_labels()
    handles = [(band_of[h], h) if h in band_of else h for h in handles]
    if any_star:
        handles.append(Line2D([], [], color="gray", **_STAR))
        labels.append(f"better than BASE (p <= {alpha:g})")
    if handles:
        ax.legend(handles, labels, fontsize=8, loc="best")


def _series_fields(table):
    plain = [r for r, b in zip(table.rows, table.is_base_row) if not b]
    fields = [f for f in (plain[0] if plain else {}) if f != "gamma"]
    varying = [f for f in fields if len({repr(r[f]) for r in plain}) > 1]
    return fields, varying


def plot_name(table, taken=()):
    """A file name that says what the plot shows:
    `accuracy_vs_gamma-<dataset>-<model>.png` (`-2`, `-3`, ... when the
    report has several tables of one data set and model)."""
    parts = [
        _fmt(table.fixed[f]) for f in ("dataset", "model") if f in table.fixed
    ]
    stem = "-".join(["accuracy_vs_gamma", *parts])
    stem = "".join(c if c.isalnum() or c in "-_." else "-" for c in stem)
    name, k = f"{stem}.png", 1
    while name in taken:
        k += 1
        name = f"{stem}-{k}.png"
    return name
