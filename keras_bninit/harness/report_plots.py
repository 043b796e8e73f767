"""The accuracy-vs-gamma figure of a report table (matplotlib, Agg)."""

import math
import textwrap

from keras_bninit.harness.config import format_value as _fmt


def plot_accuracy_vs_gamma(table, path, ylabel="test accuracy (%)"):
    """Test accuracy vs gamma per learning rate, with the BASE band.

    One line per column (learning rate) through the mean of each gamma row
    (log x axis), error bars one standard deviation; significantly better
    points are drawn as stars. Each column's BASE is a dashed line at its
    mean and a light band of +/- one standard deviation, in the same
    colour; the y range leaves room around them so the band stays a band.
    The title gives the shared fields and the number of seeds per point.
    Uses matplotlib's Agg canvas (no display, no pyplot state).

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
    """The matplotlib `Figure` that `plot_accuracy_vs_gamma` saves."""
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
    _, varying = _series_fields(table)
    extent = []  # every drawn y value, to size the axis
    band_of = {}  # BASE line -> its band, shown together in the legend
    any_star = False
    for j, label in enumerate(table.column_labels):
        color = f"C{j % 10}"
        series = {}
        for i, row in enumerate(table.rows):
            cell = table.cells.get((i, j))
            if cell is None or math.isnan(cell.mean):
                continue
            if table.is_base_row[i]:
                line, band = _draw_base(ax, cell, color, label)
                band_of[line] = band
                extent += _band(cell)
                continue
            name = tuple((f, row[f]) for f in varying)
            series.setdefault(name, []).append((float(row["gamma"]), cell))
        for k, (name, points) in enumerate(sorted(series.items())):
            # nudge each learning rate sideways so error bars do not overlap
            dodge = 10 ** (0.012 * (j - (len(table.columns) - 1) / 2))
            extra = ", ".join(f"{f}={_fmt(v)}" for f, v in name)
            drawn, starred = _draw_series(
                ax,
                sorted(points, key=lambda p: p[0]),
                dodge,
                color,
                k,
                f"{label}, {extra}" if extra else label,
            )
            extent += drawn
            any_star = any_star or starred
    _finish_axes(ax, table, extent, ylabel)
    _legend(ax, band_of, any_star, table.alpha)
    return fig


def _band(cell):
    std = 0.0 if math.isnan(cell.std) else cell.std
    return [cell.mean - std, cell.mean + std]


def _draw_base(ax, cell, color, label):
    """BASE: a dashed line at its mean in a light band of +/- 1 std."""
    low, high = _band(cell)
    band = ax.axhspan(low, high, facecolor=color, edgecolor="none", alpha=0.1)
    line = ax.axhline(
        cell.mean,
        color=color,
        linestyle="--",
        linewidth=1,
        label=f"BASE, {label} (band: ±1 std)",
    )
    return line, band


def _draw_series(ax, points, dodge, color, k, label):
    """One line of (gamma, cell) points with error bars, stars on the
    significantly better ones; returns the y extent and whether a star
    was drawn."""
    x = [p[0] * dodge for p in points]
    y = [p[1].mean for p in points]
    err = [0.0 if math.isnan(p[1].std) else p[1].std for p in points]
    ax.errorbar(
        x,
        y,
        yerr=err,
        color=color,
        marker="o",
        capsize=3,
        linestyle=["-", ":", "-."][k % 3],
        label=label,
    )
    stars = [(p[0] * dodge, p[1].mean) for p in points if p[1].bold]
    if stars:
        ax.plot(*zip(*stars), color=color, **_STAR)
    extent = [v - e for v, e in zip(y, err)] + [v + e for v, e in zip(y, err)]
    return extent, bool(stars)


_STAR = {
    "linestyle": "none",
    "marker": "*",
    "markersize": 11,
    "markeredgecolor": "black",
}


def _finish_axes(ax, table, extent, ylabel):
    """Log gamma axis with the rows' ticks, a padded y range, the title."""
    ax.set_xscale("log")
    gammas = sorted(
        {
            float(r["gamma"])
            for r, b in zip(table.rows, table.is_base_row)
            if not b
        }
    )
    if gammas:
        ax.set_xticks(gammas, [_fmt(g) for g in gammas])
        ax.set_xlim(gammas[0] / 1.6, gammas[-1] * 1.6)
        ax.minorticks_off()
    if extent:
        # Room above and below, so that a BASE band as wide as the spread
        # of the points does not fill the plot.
        low, high = min(extent), max(extent)
        pad = max(0.35 * (high - low), 0.5 * 10.0**-table.decimals)
        ax.set_ylim(low - pad, high + pad)
    ax.set_xlabel("gamma (initial BN scale c)")
    ax.set_ylabel(ylabel)
    fewest, most = table.seed_counts()
    seeds = f"{most}" if fewest == most else f"{fewest}-{most}"
    common = ", ".join(f"{k}={_fmt(v)}" for k, v in table.common.items())
    shared = f"gamma rows: {common}; " if common else ""
    title = [table.title, f"{shared}{seeds} seeds per point; bars: ±1 std"]
    ax.set_title(
        "\n".join(textwrap.fill(t, 80) for t in title if t), fontsize=9
    )
    ax.grid(True, which="both", alpha=0.3)


def _legend(ax, band_of, any_star, alpha):
    from matplotlib.lines import Line2D

    handles, labels = ax.get_legend_handles_labels()
    handles = [(band_of[h], h) if h in band_of else h for h in handles]
    if any_star:
        handles.append(Line2D([], [], color="gray", **_STAR))
        labels.append(f"better than BASE (p <= {alpha:g})")
    ax.legend(handles, labels, fontsize=8, loc="best")


def _series_fields(table):
    plain = [r for r, b in zip(table.rows, table.is_base_row) if not b]
    fields = [f for f in (plain[0] if plain else {}) if f != "gamma"]
    varying = [f for f in fields if len({repr(r[f]) for r in plain}) > 1]
    return fields, varying
