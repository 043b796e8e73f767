"""The accuracy-vs-gamma figure of a report table (matplotlib, Agg)."""

import math
import textwrap

from keras_bninit.harness.report import _fmt


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
    from matplotlib.lines import Line2D

    if table.row_key != "gamma":
        raise ValueError(
            f'The plot needs a table with row_key="gamma". '
            f"Received: row_key={table.row_key!r}"
        )

    fig = Figure(figsize=(7, 4.8), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    colors = [f"C{k % 10}" for k in range(len(table.columns))]
    _, varying = _series_fields(table)
    extent = []  # every drawn y value, to size the axis
    any_star = False
    band_of = {}
    for j, label in enumerate(table.column_labels):
        color = colors[j]
        series = {}
        for i, row in enumerate(table.rows):
            cell = table.cells.get((i, j))
            if cell is None or math.isnan(cell.mean):
                continue
            if table.is_base_row[i]:
                std = 0.0 if math.isnan(cell.std) else cell.std
                band = ax.axhspan(
                    cell.mean - std,
                    cell.mean + std,
                    facecolor=color,
                    edgecolor="none",
                    alpha=0.1,
                )
                line = ax.axhline(
                    cell.mean,
                    color=color,
                    linestyle="--",
                    linewidth=1,
                    label=f"BASE, {label} (band: ±1 std)",
                )
                band_of[line] = band  # the legend shows both
                extent += [cell.mean - std, cell.mean + std]
                continue
            name = tuple((f, row[f]) for f in varying)
            series.setdefault(name, []).append((float(row["gamma"]), cell))
        for k, (name, points) in enumerate(sorted(series.items())):
            points.sort(key=lambda p: p[0])
            # nudge each learning rate sideways so error bars do not overlap
            dodge = 10 ** (0.012 * (j - (len(table.columns) - 1) / 2))
            x = [p[0] * dodge for p in points]
            y = [p[1].mean for p in points]
            err = [0.0 if math.isnan(p[1].std) else p[1].std for p in points]
            extent += [v - e for v, e in zip(y, err)]
            extent += [v + e for v, e in zip(y, err)]
            extra = ", ".join(f"{f}={_fmt(v)}" for f, v in name)
            ax.errorbar(
                x,
                y,
                yerr=err,
                color=color,
                marker="o",
                capsize=3,
                linestyle=["-", ":", "-."][k % 3],
                label=f"{label}, {extra}" if extra else label,
            )
            stars = [(p[0] * dodge, p[1].mean) for p in points if p[1].bold]
            any_star = any_star or bool(stars)
            if stars:
                ax.plot(
                    *zip(*stars),
                    linestyle="none",
                    marker="*",
                    markersize=11,
                    color=color,
                    markeredgecolor="black",
                )
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
    title = [
        table.title,
        f"gamma rows: {common}; " if common else "",
        f"{seeds} seeds per point; bars: ±1 std",
    ]
    title = [title[0], title[1] + title[2]]
    ax.set_title(
        "\n".join(textwrap.fill(t, 80) for t in title if t), fontsize=9
    )
    ax.grid(True, which="both", alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    handles = [(band_of[h], h) if h in band_of else h for h in handles]
    if any_star:
        handles.append(
            Line2D(
                [],
                [],
                linestyle="none",
                marker="*",
                markersize=11,
                color="gray",
                markeredgecolor="black",
            )
        )
        labels.append(f"better than BASE (p <= {table.alpha:g})")
    ax.legend(handles, labels, fontsize=8, loc="best")
    return fig


def _series_fields(table):
    plain = [r for r, b in zip(table.rows, table.is_base_row) if not b]
    fields = [f for f in (plain[0] if plain else {}) if f != "gamma"]
    varying = [f for f in fields if len({repr(r[f]) for r in plain}) > 1]
    return fields, varying
