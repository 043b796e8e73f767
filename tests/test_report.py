"""Paper-style tables from a synthetic results store."""

import csv
import io
import os
import re

import numpy as np
import pytest
import scipy.stats

from keras_bninit.harness import report, report_plots, stats
from keras_bninit.harness.config import config_key
from keras_bninit.harness.store import ResultStore

SEEDS = range(1, 6)
NOISE = {1: 0.0, 2: 0.01, 3: -0.01, 4: 0.005, 5: -0.005}
BASE_MEAN = {0.1: 0.80, 0.01: 0.70}
# gains over BASE per (gamma, lr) and seed
GAINS = {
    # significant and the best of its column
    (0.1, 0.1): [0.02, 0.03, 0.01, 0.02, 0.025],
    # worse than BASE
    (0.1, 0.01): [-0.01, -0.02, -0.01, 0.0, -0.015],
    # no gain on average
    (0.5, 0.1): [0.01, -0.01, 0.0, 0.005, -0.005],
    # best of its column but noisy (not significant); seed 5 missing
    (0.5, 0.01): [0.05, 0.04, -0.06, 0.05, None],
}


def _config(seed, lr, gamma, divisor):
    return {
        "dataset": "cifar10",
        "model": "resnet18",
        "lr": lr,
        "gamma": gamma,
        "gamma_lr_divisor": divisor,
        "epochs": 2,
        "seed": seed,
        "out": "/tmp/ignored",
    }


def _accuracy(lr, gamma, seed):
    base = BASE_MEAN[lr] + NOISE[seed]
    if gamma is None:
        return base
    gain = GAINS[gamma, lr][seed - 1]
    return None if gain is None else base + gain


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    store = ResultStore(tmp_path_factory.mktemp("sweep"))
    for lr in BASE_MEAN:
        for seed in SEEDS:
            store.put(
                {
                    "config": _config(seed, lr, 1.0, 1.0),
                    "status": "ok",
                    "test_accuracy": _accuracy(lr, None, seed),
                }
            )
            for gamma in (0.1, 0.5):
                acc = _accuracy(lr, gamma, seed)
                store.put(
                    {
                        "config": _config(seed, lr, gamma, 100.0),
                        "status": "ok" if acc is not None else "failed",
                        "reason": None if acc is not None else "NaN loss",
                        "test_accuracy": acc,
                    }
                )
    yield store
    store.close()


@pytest.fixture(scope="module")
def table(store):
    (table,) = report.build_tables(store)
    return table


def _cells(table):
    """(row label, column label) -> Cell."""
    return {
        (table.row_labels[i], table.column_labels[j]): cell
        for (i, j), cell in table.cells.items()
    }


def _mean_std(values):
    values = np.array(values) * 100
    return f"{values.mean():.2f} ± {values.std(ddof=1):.2f}"


def test_layout(table):
    assert table.row_labels == ["c=0.1", "c=0.5", "BASE"]
    assert table.column_labels == ["lr=0.1", "lr=0.01"]
    assert table.fixed == {
        "dataset": "cifar10",
        "model": "resnet18",
        "epochs": 2.0,
    }
    assert table.common == {"gamma_lr_divisor": 100.0}
    # users read c and a, the paper's names; fields keep theirs
    assert "rows other than BASE: a=100" in table.legend()


def test_bold_underline_and_n_exactly_where_due(table):
    cells = _cells(table)
    bold = {k for k, c in cells.items() if c.bold}
    underline = {k for k, c in cells.items() if c.underline}
    shown_n = {k for k, c in cells.items() if c.show_n}
    assert bold == {("c=0.1", "lr=0.1")}
    assert underline == {("c=0.1", "lr=0.1"), ("c=0.5", "lr=0.01")}
    assert shown_n == {("c=0.5", "lr=0.01")}
    cell = cells["c=0.5", "lr=0.01"]
    assert cell.stats["n"] == 4 and cell.stats["n_failed"] == 1
    assert table.cell_text(cell).endswith("(n=4)")


def test_markdown(table):
    text = report.to_markdown(table)
    lines = {line.split(" | ")[0]: line for line in text.splitlines()}
    best = _mean_std([_accuracy(0.1, 0.1, s) for s in SEEDS])
    noisy = _mean_std([_accuracy(0.01, 0.5, s) for s in range(1, 5)])
    base = _mean_std([_accuracy(0.1, None, s) for s in SEEDS])
    assert f"| c=0.1 | **<u>{best}</u>** |" in lines["| c=0.1"]
    assert f"| <u>{noisy} (n=4)</u> |" in lines["| c=0.5"]
    assert f"| BASE | {base} |" in lines["| BASE"]
    # the title, one bold cell and its bold p in the statistics table
    assert text.count("**") == 2 + 2 + 2
    assert text.count("<u>") == 2
    assert text.startswith("**dataset=cifar10, model=resnet18, epochs=2**")
    assert "| c | lr=0.1 | lr=0.01 |" in text


def test_markdown_p_values(table):
    text = report.to_markdown(table, show_p=True)
    ours = {s: _accuracy(0.1, 0.1, s) for s in SEEDS}
    base = {s: _accuracy(0.1, None, s) for s in SEEDS}
    p = stats.one_sided_paired_ttest(ours, base)
    assert f"(p={p:.3g})" in text


def test_latex(table):
    text = report.to_latex(table, comparisons=False)
    best = _mean_std([_accuracy(0.1, 0.1, s) for s in SEEDS])
    assert r"\textbf{\underline{" + best.replace("±", "$\\pm$") in text
    assert text.count(r"\textbf") == 1
    assert text.count(r"\underline") == 2
    assert "($n=4$)" in text
    assert r"\begin{tabular}{lrr}" in text and r"\end{tabular}" in text
    assert r"c & lr=0.1 & lr=0.01 \\" in text


def test_text(table):
    text = report.to_text(table)
    best = _mean_std([_accuracy(0.1, 0.1, s) for s in SEEDS])
    assert f"{best}*^" in text
    assert "*: better than BASE" in text
    assert "p (t-test)" in text and "p Wilcoxon" in text
    assert f"{best}*^ (p=" in report.to_text(table, show_p=True)
    header = text.splitlines()[1].split()
    assert header == ["c", "lr=0.1", "lr=0.01"]


def _comparison_rows(table):
    return {r["configuration"]: r for r in table.comparisons()}


def test_comparisons_carry_every_statistic(table):
    rows = _comparison_rows(table)
    assert list(rows) == [
        "c=0.1, lr=0.1",
        "c=0.1, lr=0.01",
        "c=0.5, lr=0.1",
        "c=0.5, lr=0.01",
        "BASE, lr=0.1",
        "BASE, lr=0.01",
    ]
    ours = {s: _accuracy(0.1, 0.1, s) for s in SEEDS}
    base = {s: _accuracy(0.1, None, s) for s in SEEDS}
    sample = stats.pair_on_common_seeds(ours, base)
    expected = stats.compare(sample, None)
    _, holm = stats.holm(
        [
            stats.one_sided_paired_ttest(ours, base),
            stats.one_sided_paired_ttest(
                {s: _accuracy(0.1, 0.5, s) for s in SEEDS}, base
            ),
        ]
    )
    best = rows["c=0.1, lr=0.1"]
    assert best["mean_std"] == _mean_std(list(ours.values()))
    assert best["n"] == "5" and best["significant"]
    assert best["difference"] == (
        f"{expected.mean_difference * 100:+.2f} "
        f"[{expected.ci_low * 100:+.2f}, {expected.ci_high * 100:+.2f}]"
    )
    assert best["dz"] == f"{expected.effect_size_dz:.2f}"
    assert best["p"] == f"{expected.p_value:.3g}"
    assert best["p_holm"] == f"{holm[0]:.3g}"
    assert best["p_wilcoxon"] == f"{expected.wilcoxon_p:.3g}"
    assert best["p_outperform"] == "1.00"
    assert rows["c=0.5, lr=0.01"]["n"] == "4"  # pairs: seed 5 failed
    assert rows["BASE, lr=0.1"]["difference"] == "BASE"
    assert [k for k, r in rows.items() if r["significant"]] == ["c=0.1, lr=0.1"]


def test_comparisons_in_markdown_text_and_latex(table, store):
    p = _comparison_rows(table)["c=0.1, lr=0.1"]["p"]
    markdown = report.to_markdown(table)
    assert f"| **{p}** |" in markdown and markdown.count(f"**{p}**") == 1
    assert "| configuration | mean ± std | n | ours - BASE [95% CI] |" in (
        markdown
    )
    text = report.to_text(table)
    assert f" {p}* " in text
    latex = report.to_latex(table)
    assert rf"\textbf{{{p}}}" in latex
    assert r"$P$($>$ BASE)" in latex and "(ours $>$ BASE)" in latex
    (holm,) = report.build_tables(store, decision="holm")
    p_holm = _comparison_rows(holm)["c=0.1, lr=0.1"]["p_holm"]
    assert f"| **{p_holm}** |" in report.to_markdown(holm)


def test_csv_columns_and_values(table):
    rows = list(csv.DictReader(io.StringIO(report.to_csv([table]))))
    assert len(rows) == 6
    for column in (
        "p_value",
        "significant",
        "p_holm",
        "significant_holm",
        "wilcoxon_p",
        "ci_low",
        "ci_high",
        "effect_size_dz",
        "p_outperform",
        "p_outperform_ci_low",
        "p_outperform_ci_high",
        "dataset",
        "lr",
        "gamma",
    ):
        assert column in rows[0]
    by_cell = {(r["row"], r["column"]): r for r in rows}
    best = by_cell["c=0.1", "lr=0.1"]
    assert best["gamma"] == "0.1"  # the data keeps the field's name
    ours = {s: _accuracy(0.1, 0.1, s) for s in SEEDS}
    base = {s: _accuracy(0.1, None, s) for s in SEEDS}
    assert float(best["p_value"]) == pytest.approx(
        stats.one_sided_paired_ttest(ours, base)
    )
    # Holm over the two configurations sharing the lr=0.1 BASE
    other = by_cell["c=0.5", "lr=0.1"]
    _, corrected = stats.holm([float(best["p_value"]), float(other["p_value"])])
    assert float(best["p_holm"]) == pytest.approx(corrected[0])
    assert best["significant"] == "True"
    assert best["best_in_column"] == "True"
    mean_diff = np.mean([ours[s] - base[s] for s in SEEDS]) * 100
    assert float(best["mean_difference"]) == pytest.approx(mean_diff)
    assert by_cell["c=0.5", "lr=0.01"]["missing_seeds"] == "5"
    assert by_cell["BASE", "lr=0.1"]["is_base"] == "True"
    # Counts and integer fields are written as integers.
    assert (best["epochs"], best["n"], best["n_failed"]) == ("2", "5", "0")
    assert by_cell["c=0.5", "lr=0.01"]["n_ours"] == "4"


def test_holm_decision_can_drive_bold(store):
    (table,) = report.build_tables(store, decision="holm")
    cells = _cells(table)
    assert {k for k, c in cells.items() if c.bold} == {
        k for k, c in cells.items() if c.stats["significant_holm"]
    }


def test_rows_keyed_by_bn():
    records = []
    for seed in SEEDS:
        for bn, gain in (("standard", 0.0), ("rbn", 0.02), ("iebn", 0.001)):
            config = {**_config(seed, 0.1, 1.0, 1.0), "bn": bn}
            acc = 0.8 + NOISE[seed] + gain + 0.001 * seed * (bn == "rbn")
            records.append(
                {"config": config, "status": "ok", "test_accuracy": acc}
            )
    (table,) = report.build_tables(records, row_key="bn")
    assert table.row_labels == ["bn=iebn", "bn=rbn", "BASE"]
    cells = _cells(table)
    assert cells["bn=rbn", "lr=0.1"].bold
    assert cells["bn=rbn", "lr=0.1"].underline
    with pytest.raises(ValueError, match='row_key="gamma"'):
        report_plots.plot_accuracy_vs_gamma(table, "unused.png")
    drawn, starred, _ = _drawn_differences(
        report_plots.paired_difference_figure(table)
    )
    assert set(drawn) == {("bn=iebn", "lr=0.1"), ("bn=rbn", "lr=0.1")}
    assert starred == {
        k for k, c in cells.items() if c.stats["significant_holm"]
    }
    assert ("bn=rbn", "lr=0.1") in starred


def test_separate_tables_per_dataset():
    records = [
        {
            "config": {**_config(s, 0.1, g, 1.0), "dataset": name},
            "status": "ok",
            "test_accuracy": 0.8 + NOISE[s] + (g < 1) * 0.01,
        }
        for name in ("cifar10", "cifar100")
        for s in SEEDS
        for g in (0.1, 1.0)
    ]
    tables = report.build_tables(records)
    assert [t.fixed["dataset"] for t in tables] == ["cifar10", "cifar100"]


def test_plot_and_write_report(store, tmp_path):
    text, paths = report.write_report(store, tmp_path / "out")
    assert "c=0.1" in text and "BASE" in text and "gamma" not in text
    assert [os.path.basename(p) for p in paths["plots"]] == [
        "accuracy_vs_gamma-cifar10-resnet18.png",
        "paired_difference-cifar10-resnet18.png",
    ]
    for plot in paths["plots"]:
        with open(plot, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    for name in ("markdown", "latex", "csv"):
        with open(paths[name], encoding="utf-8") as f:
            assert "c=0.1" in f.read()
    with open(paths["latex"], encoding="utf-8") as f:
        assert f.readline().startswith(
            r"% keras_bninit report. Needs \usepackage{booktabs}"
        )
    with open(paths["markdown"], encoding="utf-8") as f:
        assert f.readline() == "Keras backend: tensorflow\n"
        assert "p Wilcoxon" in f.read()


def _t_half(values):
    values = np.asarray(values)
    n = len(values)
    return scipy.stats.t.ppf(0.975, n - 1) * values.std(ddof=1) / np.sqrt(n)


def test_accuracy_plot_title_intervals_and_stars(table):
    figure = report_plots.accuracy_vs_gamma_figure(table)
    (ax,) = figure.axes
    # One line: data set, model, seeds (seed 5 of one cell failed).
    assert ax.get_title() == "cifar10, resnet18: 4-5 seeds per point, 95 % CI"
    # Each BASE band is its mean's 95 % t interval, inside the y range.
    low, high = ax.get_ylim()
    bands = sorted((p.get_y(), p.get_y() + p.get_height()) for p in ax.patches)
    expected = []
    for lr in BASE_MEAN:
        values = np.array([_accuracy(lr, None, s) for s in SEEDS]) * 100
        half = _t_half(values)
        expected.append((values.mean() - half, values.mean() + half))
        assert low < values.mean() - half < values.mean() + half < high
    np.testing.assert_allclose(bands, sorted(expected), atol=1e-6)
    # The y axis fits the intervals, inside what accuracies can be.
    assert 55 < low < 70 and 80 < high < 95
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "BASE, lr=0.1 (band: 95 % CI)" in labels
    assert "better than BASE: one-sided paired t-test, p <= 0.05" in labels
    # The star sits on the significant configuration (gamma 0.1, lr 0.1).
    stars = [line for line in ax.get_lines() if line.get_marker() == "*"]
    (star,) = stars
    mean = np.mean([_accuracy(0.1, 0.1, s) for s in SEEDS]) * 100
    np.testing.assert_allclose(star.get_ydata(), [mean])


def _one_lr_records(gains):
    """BASE and each c of `gains` (c -> gain per seed) at lr 0.1."""
    records = []
    for seed in SEEDS:
        for gamma, gain in {1.0: [0.0] * len(SEEDS), **gains}.items():
            records.append(
                {
                    "config": _config(
                        seed, 0.1, gamma, 1.0 if gamma == 1 else 100
                    ),
                    "status": "ok",
                    "test_accuracy": 0.8 + NOISE[seed] + gain[seed - 1],
                }
            )
    return records


@pytest.mark.parametrize(
    "gains, decision, verdict",
    [
        ([0.022, 0.024, 0.026, 0.028, 0.03], "raw", " <= 0.05"),
        ([0.01, -0.01, 0.0, 0.005, -0.004], "raw", ", n.s."),
        ([0.01, -0.01, 0.0, 0.005, -0.004], "holm", ", n.s."),
    ],
)
def test_one_gamma_is_drawn_on_a_base_band(tmp_path, gains, decision, verdict):
    records = _one_lr_records({0.1: gains})
    (table,) = report.build_tables(records, decision=decision)
    (ax,) = report_plots.accuracy_vs_gamma_figure(table).axes
    ticks = [t.get_text() for t in ax.get_xticklabels()]
    assert ticks == ["c=0.1\nlr=0.1"]
    assert ax.get_xscale() == "linear"
    # BASE is a band (its mean's 95 % t interval, the legend says so)
    # around a dashed line at its mean, behind the configuration.
    base = np.array([0.8 + NOISE[s] for s in SEEDS]) * 100
    (band,) = ax.patches
    np.testing.assert_allclose(
        [band.get_y(), band.get_y() + band.get_height()],
        [base.mean() - _t_half(base), base.mean() + _t_half(base)],
    )
    (line,) = [x for x in ax.get_lines() if x.get_linestyle() == "--"]
    np.testing.assert_allclose(line.get_ydata(), [base.mean()] * 2)
    assert band.get_x() < 0 < band.get_x() + band.get_width()
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels[0] == "BASE, lr=0.1 (band: 95 % CI)"
    # The p-value of the decision, naming its test; n.s. above 0.05.
    cell = table.cells[0, 0]
    p = cell.stats["p_holm" if decision == "holm" else "p_value"]
    assert (p <= 0.05) == (verdict == " <= 0.05")
    test = "Holm-adjusted " * (decision == "holm") + "one-sided paired t-test"
    (text,) = ax.texts
    assert text.get_text() == f"{test}\np = {p:.3g}{verdict}"
    # The y axis fits the intervals, not 0-100.
    low, high = ax.get_ylim()
    ours = np.array([0.8 + NOISE[s] + g for s, g in zip(SEEDS, gains)]) * 100
    assert min(base.min(), ours.min()) - 2 < low < base.mean() - _t_half(base)
    assert ours.mean() < high < max(base.max(), ours.max()) + 2
    text, paths = report.write_report(records, tmp_path)
    assert [os.path.basename(p) for p in paths["plots"]] == [
        "accuracy_vs_gamma-cifar10-resnet18.png",
        "paired_difference-cifar10-resnet18.png",
    ]


def _drawn_differences(figure):
    """What the paired-difference figure draws, read back from its axes:
    (row label, panel title) -> (mean, interval low, high), the starred
    rows, and the right-hand labels."""
    drawn, starred, notes = {}, set(), {}
    for ax in figure.axes:
        column = ax.get_title(loc="left")
        rows = [t.get_text() for t in ax.get_yticklabels()]
        (right,) = ax.child_axes
        for row, t in zip(rows, right.get_yticklabels()):
            notes[row, column] = t.get_text()
        for container in ax.containers:
            point, _, (bars,) = container.lines
            (mean,), (y,) = point.get_xdata(), point.get_ydata()
            (low, y_low), (high, y_high) = bars.get_segments()[0]
            assert y_low == y_high == y
            drawn[rows[round(y)], column] = (mean, low, high)
        for line in ax.get_lines():
            if line.get_marker() == "*":
                (y,) = line.get_ydata()
                starred.add((rows[round(y)], column))
        zero = [x for x in ax.get_lines() if list(x.get_xdata()) == [0, 0]]
        assert zero, "no zero line"
    return drawn, starred, notes


def test_paired_difference_plot_draws_the_reports_comparisons(table):
    figure = report_plots.paired_difference_figure(table)
    drawn, starred, notes = _drawn_differences(figure)
    cells = {k: c for k, c in _cells(table).items() if k[0] != "BASE"}
    assert drawn.keys() == cells.keys()  # every configuration, no BASE
    for key, cell in cells.items():
        s = cell.stats
        expected = [
            s[k] * 100 for k in ("mean_difference", "ci_low", "ci_high")
        ]
        np.testing.assert_allclose(drawn[key], expected, rtol=1e-12)
        # ... which is what the report's statistics table prints
        shown = _comparison_rows(table)[", ".join(key)]["difference"]
        mean, low, high = drawn[key]
        assert shown == f"{mean:+.2f} [{low:+.2f}, {high:+.2f}]"
        assert notes[key] == f"{shown}, p Holm = {s['p_holm']:.3g}"
    assert starred == {
        k for k, c in cells.items() if c.stats["significant_holm"]
    }
    assert starred == {("c=0.1", "lr=0.1")}
    # one panel per learning rate, each with its own x range
    assert [ax.get_title(loc="left") for ax in figure.axes] == [
        "lr=0.1",
        "lr=0.01",
    ]
    (legend,) = figure.legends
    assert [t.get_text() for t in legend.get_texts()] == [
        "better than BASE: Holm-adjusted one-sided paired t-test, p <= 0.05"
    ]


def test_paired_stars_are_holm_significant_not_raw():
    # c=0.1 raw p = 0.041, doubled by Holm beside c=0.5: starred on the
    # accuracy plot (the raw decision), not on the paired one.
    records = _one_lr_records(
        {
            0.1: [0.01, 0.02, -0.002, 0.015, 0.003],
            0.5: [0.01, -0.01, 0.0, 0.005, -0.004],
        }
    )
    (table,) = report.build_tables(records)
    cell = _cells(table)["c=0.1", "lr=0.1"]
    assert cell.bold and not cell.stats["significant_holm"]
    (ax,) = report_plots.accuracy_vs_gamma_figure(table).axes
    assert [x for x in ax.get_lines() if x.get_marker() == "*"]
    figure = report_plots.paired_difference_figure(table)
    drawn, starred, _ = _drawn_differences(figure)
    assert set(drawn) == {("c=0.1", "lr=0.1"), ("c=0.5", "lr=0.1")}
    assert starred == set() and not figure.legends
    # the x axis holds zero and every interval
    (ax,) = figure.axes
    low, high = ax.get_xlim()
    assert low < min(v[1] for v in drawn.values())
    assert high > max(v[2] for v in drawn.values()) and low < 0 < high


def test_paired_difference_needs_a_base(tmp_path):
    records = _one_lr_records({0.1: [0.01] * 5})
    ours = [r for r in records if r["config"]["gamma"] < 1]
    _, paths = report.write_report(ours, tmp_path / "ours")
    assert [os.path.basename(p) for p in paths["plots"]] == [
        "accuracy_vs_gamma-cifar10-resnet18.png"
    ]
    # BASE alone: nothing to plot against c, nothing compared
    base = [r for r in records if r["config"]["gamma"] == 1]
    _, paths = report.write_report(base, tmp_path / "base")
    assert paths["plots"] == []


def _identical_and_normal(other_gains):
    """BASE, c=0.1 clearly better, c=0.5 with `other_gains`."""
    gains = {0.1: [0.02, 0.03, 0.01, 0.02, 0.025], 0.5: other_gains}
    records = []
    for seed in SEEDS:
        base = _config(seed, 0.1, 1.0, 1.0)
        records.append(
            {"config": base, "status": "ok", "test_accuracy": 0.8 + NOISE[seed]}
        )
        for gamma, gain in gains.items():
            records.append(
                {
                    "config": _config(seed, 0.1, gamma, 1.0),
                    "status": "ok",
                    "test_accuracy": 0.8 + NOISE[seed] + gain[seed - 1],
                }
            )
    (table,) = report.build_tables(records)
    return table


def _line(text, label):
    (line,) = [x for x in text.splitlines() if x.startswith(label)]
    return line


def test_identical_runs_are_named_where_the_p_value_would_be():
    table = _identical_and_normal([0.0] * 5)
    # The same table with a c=0.5 that merely fails to beat BASE.
    other = _identical_and_normal([0.01, -0.01, 0.0, 0.005, -0.01])
    rows = _comparison_rows(table)
    same, normal = rows["c=0.5, lr=0.1"], rows["c=0.1, lr=0.1"]
    assert (same["p"], same["p_holm"]) == ("identical runs",) * 2
    assert same["p_wilcoxon"] == "1" and same["dz"] == "–"
    assert same["difference"] == "+0.00 [+0.00, +0.00]"
    assert not same["significant"]
    # The normal row next to it is what it would be next to any other
    # comparison that is not significant: Holm counts both.
    assert normal == _comparison_rows(other)["c=0.1, lr=0.1"]
    assert normal["significant"] and normal["p"] != "identical runs"

    markdown = report.to_markdown(table, show_p=True)
    assert "| c=0.5, lr=0.1 |" in markdown
    assert "| identical runs | identical runs | 1 |" in _line(
        markdown, "| c=0.5, lr=0.1 |"
    )
    assert _line(markdown, "| c=0.1, lr=0.1 |") == _line(
        report.to_markdown(other), "| c=0.1, lr=0.1 |"
    )
    assert "(identical runs)" in _line(markdown, "| c=0.5 |")
    assert "identical runs: every paired difference is zero" in markdown
    assert "identical runs" not in report.to_markdown(other)

    latex = report.to_latex(table)
    assert "& identical runs & identical runs & 1 &" in _line(
        latex, "c=0.5, lr=0.1 &"
    )
    assert _line(latex, "c=0.1, lr=0.1 &") == _line(
        report.to_latex(other), "c=0.1, lr=0.1 &"
    )
    assert "identical runs" in _line(report.to_text(table), "c=0.5, lr")

    by_row = {
        r["row"]: r for r in csv.DictReader(io.StringIO(report.to_csv(table)))
    }
    other_rows = {
        r["row"]: r for r in csv.DictReader(io.StringIO(report.to_csv(other)))
    }
    assert by_row["c=0.5"]["p_value"] == "identical runs"
    assert by_row["c=0.5"]["p_holm"] == "identical runs"
    assert by_row["c=0.5"]["note"] == "identical runs"
    assert by_row["c=0.5"]["significant"] == "False"
    assert by_row["c=0.5"]["wilcoxon_p"] == "1.0"
    assert by_row["c=0.1"] == other_rows["c=0.1"]
    assert float(by_row["c=0.1"]["p_value"]) < 0.05


def test_few_seeds_are_named_in_the_legend(table):
    # (gamma 0.5, lr 0.01) has 4 seeds in common with BASE, the others 5.
    for render in (report.comparisons_markdown, report.comparisons_text):
        text = " ".join(render(table).split())
        assert "Too few seeds to judge: n = 4 pairs (fewer than 5;" in text


# -- odd stores (issue 28, item 8) --------------------------------------------


def _odd_store(path, **changes):
    """BASE and c = 0.1 at lr 0.1, seeds 1-5, with `changes`: (gamma,
    seed) -> the test_accuracy stored in place of the real one."""
    with ResultStore(path) as store:
        for seed in SEEDS:
            for gamma in (1.0, 0.1):
                acc = _accuracy(0.1, None if gamma == 1.0 else gamma, seed)
                acc = changes.get(f"c{gamma:g}s{seed}".replace(".", "_"), acc)
                store.put(
                    {
                        "config": _config(
                            seed, 0.1, gamma, 1.0 + 99 * (gamma != 1)
                        ),
                        "status": "ok",
                        "test_accuracy": acc,
                    }
                )
    return os.path.join(path, "results.sqlite")


def _key(gamma, seed):
    return config_key(_config(seed, 0.1, gamma, 1.0 + 99 * (gamma != 1)))


def test_dropped_values_are_warned_naming_their_rows(tmp_path):
    path = _odd_store(tmp_path, c0_1s2=float("nan"), c0_1s4="0.83")
    with pytest.warns(RuntimeWarning) as caught:
        with ResultStore(tmp_path) as store:
            (table,) = report.build_tables(store)
    lines = sorted(str(w.message) for w in caught)
    assert lines == [
        f"{path} row config_key={_key(0.1, 2)} seed=2: test_accuracy=nan is "
        "not a finite number; left out of the means and tests, counted as "
        "failed",
        f"{path} row config_key={_key(0.1, 4)} seed=4: test_accuracy='0.83' "
        "is not a finite number; left out of the means and tests, counted "
        "as failed",
    ]
    ours = next(c for c in table.cells.values() if not c.stats["is_base"])
    assert ours.stats["seeds"] == (1, 3, 5) and ours.stats["n_failed"] == 2
    expected = [_accuracy(0.1, 0.1, s) * 100 for s in (1, 3, 5)]
    assert ours.mean == pytest.approx(np.mean(expected))
    # A list of records is named by its index.
    with ResultStore(tmp_path) as store:
        records = store.records(status=None)
    (i,) = [
        i
        for i, r in enumerate(records)
        if r["config"]["gamma"] == 0.1 and r["config"]["seed"] == 2
    ]
    name = rf"^record {i} \(config_key={_key(0.1, 2)}, seed=2\): test_acc"
    with pytest.warns(RuntimeWarning) as caught:
        report.build_tables(records)
    assert len(caught) == 2 and re.match(name, str(caught[0].message))


def test_an_accuracy_out_of_range_names_its_row_and_writes_nothing(tmp_path):
    path = _odd_store(tmp_path / "sweep", c0_1s3=7.5)
    out = tmp_path / "sweep" / "report"
    with pytest.raises(ValueError) as raised:
        report.write_report(path, out)
    assert str(raised.value) == (
        f"{path} row config_key={_key(0.1, 3)} seed=3: test_accuracy=7.5 is "
        "not an accuracy; valid: 0 <= test_accuracy <= 1"
    )
    assert "bounds" not in str(raised.value)
    assert not out.exists()


def test_a_row_that_is_not_its_records_is_left_out_of_the_report(tmp_path):
    import sqlite3

    path = _odd_store(tmp_path)
    # BASE's seed 1 under another key, then stored again: two rows of one
    # run ("Two records for the same run" before), and a truncated record.
    con = sqlite3.connect(path)
    con.execute(
        "UPDATE runs SET config_key = 'feedfacefeedface' "
        "WHERE config_key = ? AND seed = 1",
        (_key(1.0, 1),),
    )
    con.execute(
        "UPDATE runs SET record = substr(record, 1, 30) "
        "WHERE config_key = ? AND seed = 5",
        (_key(0.1, 5),),
    )
    con.commit()
    con.close()
    with ResultStore(tmp_path) as store:
        store.put({"config": _config(1, 0.1, 1.0, 1.0), "status": "ok",
                   "test_accuracy": _accuracy(0.1, None, 1)})  # fmt: skip
    with open(path, "rb") as f:
        before = f.read()
    with pytest.warns(RuntimeWarning) as caught:
        (table,) = report.build_tables(path)
    lines = sorted(str(w.message) for w in caught)
    assert len(lines) == 2
    assert lines[0].startswith(
        f"{path} row config_key={_key(0.1, 5)} seed=5 holds a record that is "
        "not valid JSON ("
    )
    assert lines[1] == (
        f"{path} row config_key=feedfacefeedface seed=1 does not match its "
        f"config, whose key is {_key(1.0, 1)}; left out (the next sweep on "
        "this folder sets it aside and runs it again)"
    )
    n = sorted(c.stats["n_ours"] for c in table.cells.values())
    assert n == [4, 5]
    with open(path, "rb") as f:
        assert f.read() == before  # read, never written


@pytest.mark.parametrize("content", [b"", b"SQLite format 3\0" + b"\xff" * 200])
def test_an_empty_or_damaged_store_is_refused_unchanged(tmp_path, content):
    from keras_bninit.harness.store import StoreError

    path = tmp_path / "results.sqlite"
    path.write_bytes(content)
    with pytest.raises(StoreError, match=f"^'{path}' is "):
        report.write_report(str(path), tmp_path / "report")
    assert path.read_bytes() == content
    assert sorted(os.listdir(tmp_path)) == ["results.sqlite"]
