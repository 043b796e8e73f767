"""The group-sequential paired test and sequential sweeps (issue 31).

The design's numbers by simulation, seeded: the type I error under the
null, the runs Table 1(a) needs, reproducible decisions. Then a sweep's
stages with an executor that stores made-up records (no training): which
runs it trains, its resume, its report, and that designs never mix.
"""

import csv
import dataclasses
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from keras_bninit.harness import sequential
from keras_bninit.harness.presets import expand
from keras_bninit.harness.sequential import Design, simulate_cell
from keras_bninit.harness.sequential_sweep import Plan, analyze, read_plan
from keras_bninit.harness.store import ResultStore
from keras_bninit.harness.sweep import run_sweep

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_bounds_are_lan_demets_obrien_fleming():
    # The published bounds for one-sided alpha 0.025, three equal looks
    # (gsDesign's sfLDOF, rpact's "asOF"): 3.710, 2.511, 1.993.
    np.testing.assert_allclose(
        sequential.efficacy_bounds((5, 10, 15), 0.025),
        (3.7103, 2.5114, 1.9930),
        atol=2e-4,
    )
    design = Design()
    np.testing.assert_allclose(
        design.efficacy_z, (3.2001, 2.1408, 1.6948), atol=2e-4
    )
    np.testing.assert_allclose(
        design.spent, (0.000687, 0.016375, 0.05), atol=1e-6
    )
    # One look is the fixed test; at each bound the stage-wise adjusted
    # p-value is exactly the error spent by then.
    assert sequential.efficacy_bounds((15,)) == pytest.approx((1.644854,))
    for k, spent in enumerate(design.spent):
        assert design.stagewise_p(k, design.efficacy_z[k]) == pytest.approx(
            spent, abs=1e-6
        )
    assert design.stagewise_p(0, 1.0) == pytest.approx(0.158655, abs=1e-6)
    assert design.stagewise_p(2, -math.inf) == 1.0
    assert [design.futility(k) for k in range(3)] == [0.0, 0.8, None]


def test_type_one_error_under_the_null_is_held():
    """Paired normal data without an effect, 5 pairs per look: the share
    of sweeps that cross an efficacy bound is at most alpha + 3 Monte
    Carlo standard errors (with futility stops, as a sweep takes them)."""
    sims = 100_000
    cell = simulate_cell(
        Design(), (0.0, 1.0), [(0.0, 1.0)], sims, np.random.default_rng(31)
    )
    rate = float(np.mean(cell.decision == sequential.EFFICACY))
    se = math.sqrt(0.05 * 0.95 / sims)
    assert rate <= 0.05 + 3 * se
    assert rate == pytest.approx(0.0475, abs=0.002)  # measured: 0.0474
    # The fixed test on the same draws holds its 0.05 too.
    assert float(np.mean(cell.fixed_significant)) == pytest.approx(
        0.05, abs=3 * se
    )
    stops = np.bincount(cell.stop.ravel(), minlength=3) / sims
    np.testing.assert_allclose(stops, (0.50, 0.32, 0.18), atol=0.01)


def test_futility_stops_never_add_a_rejection():
    """Non-binding futility: on the same draws, every sweep that crosses
    an efficacy bound with futility stops also crosses one without them;
    the bounds alone give 0.0517 at 5 pairs per look (the normal
    approximation of the cumulative t-tests' joint law, 0.050 with known
    spreads), the sweep as it runs 0.0475."""
    sims = 50_000
    cells = [
        simulate_cell(
            Design(futility_t=futility), (0.0, 1.0), [(0.0, 1.0)], sims,
            np.random.default_rng(5),
        )
        for futility in (sequential.FUTILITY_T, ())
    ]  # fmt: skip
    with_futility, bounds_alone = (c.decision == "efficacy" for c in cells)
    assert not np.any(with_futility & ~bounds_alone)
    assert with_futility.mean() == pytest.approx(0.0475, abs=0.003)
    assert bounds_alone.mean() == pytest.approx(0.0517, abs=0.003)


def _table_1a(seed, sims=20_000):
    return sequential.simulate_table(Design(), sims=sims, seed=seed)


def test_table_1a_needs_at_most_0_55_of_the_fixed_runs():
    cells = _table_1a(seed=1)
    runs = sum(float(c.runs.mean()) for c in cells.values())
    assert runs / 360 <= 0.55
    assert runs == pytest.approx(197.6, abs=1.5)  # measured
    # The cells' decisions: the fixed design's, except the two borderline
    # cells, where futility and the bounds cost some power.
    power = {
        lr: np.mean(c.decision == "efficacy", 0) for lr, c in cells.items()
    }
    fixed = {lr: np.mean(c.fixed_significant, 0) for lr, c in cells.items()}
    for lr in sequential.TABLE_1A:
        decided = np.abs(fixed[lr] - 0.5) > 0.45
        np.testing.assert_allclose(
            power[lr][decided], fixed[lr][decided], atol=0.01
        )
    assert power[0.1][6] == pytest.approx(0.64, abs=0.02)  # c = 1
    assert fixed[0.1][6] == pytest.approx(0.68, abs=0.02)
    assert power[0.001][5] == pytest.approx(0.89, abs=0.02)  # c = 0.75
    assert fixed[0.001][5] == pytest.approx(0.92, abs=0.02)


def test_stopping_decisions_are_reproducible():
    first, again = _table_1a(seed=7, sims=2000), _table_1a(seed=7, sims=2000)
    for lr in sequential.TABLE_1A:
        np.testing.assert_array_equal(first[lr].stop, again[lr].stop)
        np.testing.assert_array_equal(first[lr].decision, again[lr].decision)
    other = _table_1a(seed=8, sims=2000)
    assert any(
        not np.array_equal(first[lr].stop, other[lr].stop)
        for lr in sequential.TABLE_1A
    )


@pytest.mark.parametrize(
    "text, n, message",
    [
        ("5,10,20", 15, "the last look must equal the number of seeds, 15"),
        ("5,10,15", 8, "the last look must equal the number of seeds, 8"),
        ("10,5,15", 15, "increasing seed counts >= 2"),
        ("1,15", 15, "increasing seed counts >= 2"),
        ("5;10;15", 15, "'5;10;15' is not a list of integers"),
        ("", 15, "is not a list of integers"),
    ],
)
def test_bad_looks_are_one_line_naming_the_value(text, n, message):
    with pytest.raises(ValueError) as error:
        sequential.parse_looks(text, n)
    (line,) = str(error.value).splitlines()
    assert message in line and f"--looks {text!r}" in line
    assert "e.g." in line


def test_parse_looks():
    assert sequential.parse_looks("5,10,15", 15) == (5, 10, 15)
    assert sequential.parse_looks("15", 15) == (15,)


# ---------------------------------------------------------------------------
# A sweep in stages
# ---------------------------------------------------------------------------

# Paired differences to BASE by c and seed: c = 0.05 far above BASE
# (efficacy at the first look), c = 0.5 far below (futility there),
# c = 0.25 undecided after 5 seeds and above BASE after 10 (efficacy at
# the second look), so BASE runs seeds 1-10 and nobody seeds 11-15.
_BORDERLINE = (0.010, -0.005, 0.008, -0.002, 0.004,
               0.012, 0.009, 0.011, 0.010, 0.013,
               0.0, 0.0, 0.0, 0.0, 0.0)  # fmt: skip


def _accuracy(gamma, seed):
    base = 0.80 + 0.002 * ((seed * 7) % 5)
    if gamma == 1.0:
        return base
    if gamma == 0.25:
        return base + _BORDERLINE[seed - 1]
    sign = 1 if gamma == 0.05 else -1
    return base + sign * 0.05 + 0.0001 * (seed % 3)


class _Chosen:
    """Stores a record with a chosen accuracy for each run it claims,
    without training; stops the sweep (KeyboardInterrupt) after `kill`
    runs."""

    build_model = "not used"

    def __init__(self, kill=None):
        self.ran, self.kill = [], kill

    def run(self, claim_next, on_record):
        import keras

        while (config := claim_next()) is not None:
            if len(self.ran) == self.kill:
                raise KeyboardInterrupt
            self.ran.append((config.gamma, config.seed))
            record = {
                "config": dataclasses.asdict(config),
                "status": "ok",
                "test_accuracy": _accuracy(config.gamma, config.seed),
                "versions": {"keras_backend": keras.backend.backend()},
            }
            on_record(config, record, {"node": "here", "seconds": 0.0})


def _configs():
    return expand(
        [{"dataset": "digits", "gamma": [0.05, 0.25, 0.5]}], "1-15", epochs=1
    )


def _plan(looks=(5, 10, 15), seeds=range(1, 16)):
    return Plan(Design(looks), seeds)


_TRAINED = sorted(
    [(g, s) for g in (0.05, 0.5) for s in range(1, 6)]
    + [(g, s) for g in (0.25, 1.0) for s in range(1, 11)]
)


def test_a_sequential_sweep_trains_only_the_runs_its_looks_need(tmp_path):
    executor = _Chosen()
    counts = run_sweep(
        _configs(), tmp_path, quiet=True, executor=executor, sequential=_plan()
    )
    assert sorted(executor.ran) == _TRAINED  # 30 of 60
    assert len(executor.ran) == len(set(executor.ran))
    assert counts == {
        "total": 30, "skipped": 0, "ran": 30, "failed": 0, "planned": 60,
    }  # fmt: skip
    # Stage by stage: all of seeds 1-5, then c = 0.25 and BASE only.
    assert {s for _, s in executor.ran[:20]} == set(range(1, 6))
    assert {g for g, _ in executor.ran[20:]} == {0.25, 1.0}
    with ResultStore(tmp_path) as store:
        records = store.records(status=None)
    outcomes = {o.config_key: o for o in analyze(records, _plan()).values()}
    by_gamma = {
        c.gamma: outcomes[c.key()] for c in _configs() if c.key() in outcomes
    }
    assert {g: (o.decision, o.n) for g, o in by_gamma.items()} == {
        0.05: ("efficacy", 5),
        0.5: ("futility", 5),
        0.25: ("efficacy", 10),
    }
    assert by_gamma[0.25].history[0].z < Design().efficacy_z[0]
    assert by_gamma[0.25].history[1].z >= Design().efficacy_z[1]
    assert by_gamma[0.25].p_stagewise <= Design().spent[1]
    assert by_gamma[0.5].history[0].t < 0 and by_gamma[0.5].bound == 0.0
    with open(tmp_path / "sweep.json") as f:
        meta = json.load(f)
    assert meta["design"] == {
        "kind": "sequential", "looks": [5, 10, 15], "alpha": 0.05,
        "futility_t": [0.0, 0.8], "seeds": list(range(1, 16)),
    }  # fmt: skip
    assert read_plan(tmp_path) == _plan()

    # The same command again: every run is there, nothing is trained.
    again = _Chosen()
    counts = run_sweep(
        _configs(), tmp_path, quiet=True, executor=again, sequential=_plan()
    )
    assert again.ran == [] and counts["skipped"] == 30 and counts["ran"] == 0


@pytest.mark.parametrize("kill", [12, 24])  # in stage 1, in stage 2
def test_a_killed_sequential_sweep_resumes_to_the_same_decisions(
    tmp_path, kill
):
    first = _Chosen(kill=kill)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(
            _configs(), tmp_path, quiet=True, executor=first, sequential=_plan()
        )
    rest = _Chosen()
    run_sweep(
        _configs(), tmp_path, quiet=True, executor=rest, sequential=_plan()
    )
    assert len(first.ran) == kill
    assert sorted(first.ran + rest.ran) == _TRAINED  # no run twice
    uninterrupted = tmp_path / "whole"
    run_sweep(
        _configs(), uninterrupted, quiet=True, executor=_Chosen(),
        sequential=_plan(),
    )  # fmt: skip
    decisions = []
    for folder in (tmp_path, uninterrupted):
        with ResultStore(folder) as store:
            outcomes = analyze(store.records(status=None), _plan())
        decisions.append(
            sorted((o.decision, o.n, o.p_stagewise) for o in outcomes.values())
        )
    assert decisions[0] == decisions[1]
    assert len(decisions[0]) == 3


def test_designs_never_mix_in_one_folder(tmp_path):
    sequential_dir, fixed_dir = tmp_path / "sequential", tmp_path / "fixed"
    run_sweep(
        _configs(), sequential_dir, quiet=True, executor=_Chosen(),
        sequential=_plan(),
    )  # fmt: skip
    with pytest.raises(ValueError, match="holds a sequential sweep") as error:
        run_sweep(_configs(), sequential_dir, quiet=True, executor=_Chosen())
    (line,) = str(error.value).splitlines()
    assert "a fixed sweep cannot add to it" in line
    assert "--sequential --looks 5,10,15 --seeds 1-15" in line
    with pytest.raises(ValueError, match="a design is fixed in advance"):
        run_sweep(
            _configs(), sequential_dir, quiet=True, executor=_Chosen(),
            sequential=_plan(looks=(3, 15)),
        )  # fmt: skip
    no_base = [c for c in _configs() if c.gamma != 1.0]
    with pytest.raises(ValueError, match="has none in this sweep: drop --no"):
        run_sweep(
            no_base, tmp_path / "no-base", quiet=True, executor=_Chosen(),
            sequential=_plan(),
        )  # fmt: skip
    assert list((tmp_path / "no-base").iterdir()) == []
    few = [c for c in _configs() if c.seed <= 2]
    run_sweep(few, fixed_dir, quiet=True, executor=_Chosen())
    with pytest.raises(ValueError, match="holds a fixed sweep"):
        run_sweep(
            _configs(), fixed_dir, quiet=True, executor=_Chosen(),
            sequential=_plan(),
        )  # fmt: skip
    # Nothing was trained or written by the refused sweeps.
    with ResultStore(fixed_dir) as store:
        assert len(store) == 8
    with open(fixed_dir / "sweep.json") as f:
        assert "design" not in json.load(f)


def test_the_report_says_where_each_configuration_stopped(tmp_path):
    from keras_bninit.harness.report import write_report

    run_sweep(
        _configs(), tmp_path, quiet=True, executor=_Chosen(),
        sequential=_plan(),
    )  # fmt: skip
    text, paths = write_report(
        str(tmp_path / "results.sqlite"),
        str(tmp_path / "report"),
        sequential=_plan(),
    )
    lines = {line.split("  ")[0]: line for line in text.splitlines()}
    assert "5/15  efficacy (early)  z = " in lines["c=0.05, lr=0.1"]
    assert ">= 3.20" in lines["c=0.05, lr=0.1"]
    assert "5/15  futility (early)  t = " in lines["c=0.5, lr=0.1"]
    assert "< 0" in lines["c=0.5, lr=0.1"]
    assert "10/15  efficacy (early)  z = 2.7" in lines["c=0.25, lr=0.1"]
    assert ">= 2.14" in lines["c=0.25, lr=0.1"]
    assert "Runs: 30 of the fixed design's 60 (0.50)." in text
    words = " ".join(text.split())
    assert "p Holm: over the configurations sharing a BASE." in words
    # The table's bold (`*`) is the sequential decision, and says so.
    assert (
        "*: better than BASE, group-sequential one-sided paired t-test, "
        "stage-wise adjusted p <= 0.05" in words
    )
    assert (
        "c=0.25 81.10 ± 0.54*" in words and "c=0.5 75.41 ± 0.32 (n=5) " in words
    )
    with open(paths["sequential_csv"]) as f:
        rows = {r["configuration"]: r for r in csv.DictReader(f)}
    assert {k: (r["decision"], r["n"]) for k, r in rows.items()} == {
        "c=0.05, lr=0.1": ("efficacy", "5"),
        "c=0.25, lr=0.1": ("efficacy", "10"),
        "c=0.5, lr=0.1": ("futility", "5"),
    }
    assert rows["c=0.25, lr=0.1"]["stopped_early"] == "True"
    p_seq = float(rows["c=0.25, lr=0.1"]["p_stagewise"])
    p_holm = float(rows["c=0.25, lr=0.1"]["p_holm"])
    assert p_seq <= 0.0164 and p_holm == pytest.approx(min(1, 2 * p_seq))
    assert float(rows["c=0.5, lr=0.1"]["p_stagewise"]) > 0.5
    with open(paths["csv"]) as f:
        table = {r["row"]: r for r in csv.DictReader(f)}
    assert table["c=0.25"]["p_value"] == rows["c=0.25, lr=0.1"]["p_stagewise"]
    assert table["c=0.25"]["significant"] == "True"
    assert table["c=0.5"]["significant"] == "False"
    assert "## Sequential design" in open(paths["markdown"]).read()
    sequential_plot = [p for p in paths["plots"] if "sequential-" in p]
    assert [os.path.basename(p) for p in sequential_plot] == [
        "sequential-digits-resnet8.png"
    ]
    assert os.path.getsize(sequential_plot[0]) > 10_000


def test_the_command_line_refuses_to_mix_designs(tmp_path):
    run_sweep(
        [c for c in _configs() if c.seed <= 2], tmp_path, quiet=True,
        executor=_Chosen(),
    )  # fmt: skip
    result = subprocess.run(
        [
            sys.executable, os.path.join(ROOT, "train.py"), "sweep",
            "--dataset", "digits", "--gamma", "0.05", "0.25", "0.5",
            "--epochs", "1", "--sequential", "--out", str(tmp_path),
        ],
        capture_output=True, text=True, timeout=600,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert (
        line.startswith("train.py: error: ") and "holds a fixed sweep" in line
    )
    with ResultStore(tmp_path) as store:
        assert len(store) == 8
