"""PNG figures of a run directory's diagnostics (`plot_run`)."""

import json
import math
import os

import numpy as np

from keras_bninit.harness.diagnostics import (
    BN_PARAMS_FILE,
    BN_VECTORS_FILE,
    GRAD_FACTORS_FILE,
    LARGE_VALUES_FILE,
)

# -------------------------------------------------------------------- plots


def read_jsonl(path):
    """The records of a JSON lines file, as a list of dicts."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_run(run_dir, out_dir=None):
    """Draws the diagnostics of a run directory as PNG files.

    One figure per file found (missing files are skipped):

    - `bn_params_init_vs_end.png`: per layer, the distribution of each BN
      parameter at initialization and at the end (the paper's "they barely
      move" picture), and the values of all layers pooled;
    - `bn_drift.png`: mean |w - w_0| per layer over epochs;
    - `large_values.png`: fraction of |x_hat| above each threshold and max
      |x_hat| per layer, at initialization and at the end;
    - `grad_factors.png`: |gamma| / sqrt(var_B + eps) per layer (mean and
      min-max over channels), at initialization and at the end.

    Args:
        run_dir: a directory written by the callbacks of this module.
        out_dir: where to write the PNGs (default: `run_dir/plots`).

    Returns:
        The list of PNG paths written.
    """
    run_dir = os.fspath(run_dir)
    out_dir = os.fspath(out_dir or os.path.join(run_dir, "plots"))
    os.makedirs(out_dir, exist_ok=True)
    plots = [
        (BN_VECTORS_FILE, _plot_init_vs_end, "bn_params_init_vs_end.png"),
        (BN_PARAMS_FILE, _plot_drift, "bn_drift.png"),
        (LARGE_VALUES_FILE, _plot_large_values, "large_values.png"),
        (GRAD_FACTORS_FILE, _plot_grad_factors, "grad_factors.png"),
    ]
    written = []
    for source, draw, name in plots:
        source = os.path.join(run_dir, source)
        if not os.path.exists(source):
            continue
        if source.endswith(".jsonl"):
            data = read_jsonl(source)
        else:
            with open(source) as f:
                data = json.load(f)
        if not data:
            continue
        figure = draw(data)
        path = os.path.join(out_dir, name)
        figure.savefig(path, dpi=110)
        written.append(path)
    return written


def _figure(rows, cols, width, height):
    # A bare Figure renders with Agg and leaves pyplot's global state (and
    # the user's interactive backend) alone.
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    axes = figure.subplots(rows, cols, squeeze=False)
    return figure, axes


def _layer_axis(ax, layers):
    ax.set_xticks(range(len(layers)))
    size = 8 if len(layers) <= 30 else 6
    ax.set_xticklabels(layers, rotation=90, fontsize=size)
    ax.set_xlabel("BN layer (input to output)")


def _plot_init_vs_end(data):
    from matplotlib.ticker import MaxNLocator

    init, end = data["init"], data["end"]
    layers = list(init)
    weights = list(dict.fromkeys(k for layer in layers for k in init[layer]))
    figure, axes = _figure(
        len(weights), 2, max(9, 0.3 * len(layers) + 5), 3.6 * len(weights)
    )
    epoch = data["end_epoch"]
    start = _start_label(data.get("init_step", 0))
    for row, key in enumerate(weights):
        ax, hist = axes[row]
        have = [layer for layer in layers if key in init[layer]]
        positions = np.arange(len(have))
        for values, shift, color, label in (
            (init, -0.2, "tab:gray", start),
            (end, 0.2, "tab:blue", f"after epoch {epoch}"),
        ):
            parts = ax.boxplot(
                [values[layer][key] for layer in have],
                positions=positions + shift,
                widths=0.35,
                whis=(0, 100),
                patch_artist=True,
                showfliers=False,
                manage_ticks=False,
            )
            for box in parts["boxes"]:
                box.set(facecolor=color, alpha=0.6, edgecolor=color)
            ax.plot([], [], "s", color=color, label=label)
        _layer_axis(ax, have)
        ax.set_ylabel(f"{key} (per channel)")
        # Two short lines: one long line is wider than the axes and
        # constrained layout clips its start ("amma per layer").
        ax.set_title(
            f"{key} per layer, {start} vs end\n"
            "box: quartiles, whiskers: min to max",
            fontsize=10,
        )
        ax.legend(fontsize=8)
        pooled_init = np.concatenate([init[lay][key] for lay in have])
        pooled_end = np.concatenate([end[lay][key] for lay in have])
        low = min(pooled_init.min(), pooled_end.min())
        high = max(pooled_init.max(), pooled_end.max())
        if high - low < 1e-6:
            low, high = low - 0.5, high + 0.5
        bins = np.linspace(low, high, 41)
        hist.hist(pooled_init, bins, color="tab:gray", alpha=0.6, label="init")
        hist.hist(
            pooled_end,
            bins,
            color="tab:blue",
            alpha=0.6,
            label=f"epoch {epoch}",
        )
        hist.xaxis.set_major_locator(MaxNLocator(6))  # labels apart
        hist.set_xlabel(f"{key} value")
        hist.set_ylabel("channels (all layers)")
        hist.set_title(f"{key}, all layers pooled")
        hist.legend(fontsize=8)
    return figure


def _by_layer(rows):
    layers = list(dict.fromkeys(row["layer"] for row in rows))
    epochs = sorted({row["epoch"] for row in rows})
    return layers, epochs


def _layer_colors(layers):
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    return [cmap(i / max(1, len(layers) - 1)) for i in range(len(layers))]


def _plot_drift(rows):
    from matplotlib.ticker import MaxNLocator

    layers, _ = _by_layer(rows)
    weights = list(dict.fromkeys(row["weight"] for row in rows))
    figure, axes = _figure(1, len(weights), 5.5 * len(weights), 4.2)
    colors = _layer_colors(layers)
    for ax, key in zip(axes[0], weights, strict=True):
        for layer, color in zip(layers, colors, strict=True):
            points = sorted(
                (row["epoch"], row["drift"])
                for row in rows
                if row["layer"] == layer and row["weight"] == key
            )
            if points:
                x, y = zip(*points, strict=True)
                ax.plot(x, y, marker=".", color=color, label=layer)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel(f"epoch (0 = {_start_label(_start_step(rows))})")
        ax.set_ylabel(f"mean |{key} - {key}_0| over channels")
        ax.set_title(f"{key} drift from {_start_label(_start_step(rows))}")
        _layer_legend(figure, ax, layers, colors)
    return figure


def _layer_legend(figure, ax, layers, colors):
    if len(layers) <= 12:
        ax.legend(fontsize=7, title="BN layer", title_fontsize=7)
        return
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.ticker import MaxNLocator

    mappable = ScalarMappable(Normalize(0, len(layers) - 1), "viridis")
    bar = figure.colorbar(
        mappable, ax=ax, label="BN layer index (0 = nearest the input)"
    )
    bar.locator = MaxNLocator(integer=True)
    bar.update_ticks()


def _first_and_last(rows):
    layers, epochs = _by_layer(rows)
    table = {(row["epoch"], row["layer"]): row for row in rows}
    chosen = [epochs[0]] + ([epochs[-1]] if len(epochs) > 1 else [])
    return layers, chosen, table


def _start_label(step):
    """What epoch 0 of a record is: the model's initialization, or the
    state the callbacks found when attached to a model trained before."""
    return "initialization" if not step else f"at attach (after {step} steps)"


def _start_step(rows):
    """The optimizer step of the first record (epoch 0) of `rows`."""
    return next((row.get("step", 0) for row in rows if row["epoch"] == 0), 0)


def _epoch_label(epoch, start_step=0):
    return _start_label(start_step) if epoch == 0 else f"after epoch {epoch}"


def _plot_large_values(rows):
    layers, chosen, table = _first_and_last(rows)
    keys = [key for key in rows[0] if key.startswith("frac_above_")]
    figure, axes = _figure(1, 2, max(11, 0.4 * len(layers) + 6), 4.5)
    frac_ax, max_ax = axes[0]
    x = np.arange(len(layers))
    styles = [("-", "o"), ("--", "s"), (":", "^"), ("-.", "v")]
    for i, epoch in enumerate(chosen):
        color = "tab:gray" if i == 0 else "tab:red"
        when = _epoch_label(epoch, _start_step(rows))
        for key, (style, marker) in zip(keys, styles * len(keys), strict=False):
            y = [
                100 * table.get((epoch, layer), {}).get(key, np.nan)
                for layer in layers
            ]
            threshold = key[len("frac_above_") :]
            frac_ax.plot(
                x,
                y,
                style,
                marker=marker,
                color=color,
                label=f"|x_hat| > {threshold}, {when}",
            )
        y = [
            table.get((epoch, layer), {}).get("max_abs", np.nan)
            for layer in layers
        ]
        max_ax.plot(
            x,
            y,
            marker="o",
            color=color,
            label=when,
        )
    frac_ax.set_yscale("symlog", linthresh=1e-3)
    frac_ax.set_ylabel("values above threshold (% of probe values)")
    frac_ax.set_title("Large values of the BN head x_hat per layer")
    frac_ax.legend(fontsize=7)
    max_ax.set_ylabel("max |x_hat| on the probe batch")
    max_ax.set_title("Largest normalized value per layer")
    max_ax.legend(fontsize=7)
    for ax in (frac_ax, max_ax):
        _layer_axis(ax, layers)
    return figure


def _plot_grad_factors(rows):
    layers, chosen, table = _first_and_last(rows)
    figure, axes = _figure(1, 1, max(8, 0.35 * len(layers) + 4), 4.5)
    ax = axes[0][0]
    x = np.arange(len(layers))
    for i, epoch in enumerate(chosen):
        color = "tab:gray" if i == 0 else "tab:green"
        when = _epoch_label(epoch, _start_step(rows))
        get = [table.get((epoch, layer), {}) for layer in layers]
        mean = [r.get("mean", np.nan) for r in get]
        low = [r.get("min", np.nan) for r in get]
        high = [r.get("max", np.nan) for r in get]
        ax.fill_between(x, low, high, color=color, alpha=0.2)
        ax.plot(
            x,
            mean,
            marker="o",
            color=color,
            label=f"{when}: mean (band: min to max)",
        )
    from matplotlib.ticker import FuncFormatter

    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))

    def minor_label(value, _):
        # Label 2, 3, 5 x 10^k only when the axis spans a decade or so.
        low, high = ax.get_ylim()
        few = math.log10(high / low) <= 1.5
        return f"{value:g}" if few and f"{value:e}"[0] in "235" else ""

    ax.yaxis.set_minor_formatter(FuncFormatter(minor_label))
    ax.tick_params(axis="y", which="minor", labelsize=7)
    ax.set_ylabel("|gamma| / sqrt(var_B + eps), per channel")
    ax.set_title("BN gradient factor per layer (Section 3.3)")
    ax.legend(fontsize=8)
    _layer_axis(ax, layers)
    return figure
