"""Grid expansion, presets and the resumable sweep."""

import dataclasses

import pytest

from keras_bninit.harness.presets import (
    PRESETS,
    expand,
    parse_seeds,
    preset_runs,
)
from keras_bninit.harness.store import ResultStore
from keras_bninit.harness.sweep import run_sweep
from tests._tiny import tiny_builder


def test_parse_seeds():
    assert parse_seeds("1-15") == list(range(1, 16))
    assert parse_seeds("1-3,7, 5") == [1, 2, 3, 5, 7]
    assert parse_seeds([4, 2]) == [2, 4]
    for bad in ("0-x", "-1", ""):
        with pytest.raises(ValueError, match="e.g. '1-15'"):
            parse_seeds(bad)
    with pytest.raises(ValueError, match="The seed range '5-2' is reversed"):
        parse_seeds("1,5-2")


def test_expand_adds_base_per_cell_seed_major():
    runs = expand(
        [{"dataset": "digits", "lr": [0.1, 0.01], "gamma": [0.1, 0.5]}],
        seeds="1-2",
        epochs=1,
    )
    # 2 lr x 2 gamma + BASE for each of the 2 lr cells, for 2 seeds.
    assert len(runs) == (2 * 2 + 2) * 2
    assert [r.seed for r in runs] == [1] * 6 + [2] * 6
    base = [r for r in runs if r.gamma == 1.0]
    assert {(r.lr, r.gamma_lr_divisor, r.bn) for r in base} == {
        (0.1, 1.0, "standard"),
        (0.01, 1.0, "standard"),
    }
    assert all(r.epochs == 1 and r.model == "resnet8" for r in runs)
    no_base = expand([{"dataset": "digits", "gamma": 0.1}], "1", add_base=False)
    assert [(r.gamma, r.gamma_lr_divisor) for r in no_base] == [(0.1, 100.0)]


def test_ablation_applies_to_every_run_and_keeps_base():
    grid = [{"dataset": "digits", "gamma": [0.1, 0.5]}]
    init = expand(grid, "1", ablation="init-only")
    assert sorted((r.gamma, r.gamma_lr_divisor) for r in init) == [
        (0.1, 1.0),
        (0.5, 1.0),
        (1.0, 1.0),
    ]
    lr_only = expand(grid, "1", ablation="lr-only")
    assert sorted((r.gamma, r.gamma_lr_divisor) for r in lr_only) == [
        (1.0, 1.0),
        (1.0, 100.0),
    ]
    with pytest.raises(ValueError, match="init-only, lr-only"):
        expand(grid, "1", ablation="both")


def test_grid_duplicates_of_base_run_once():
    runs = expand(
        [{"dataset": "digits", "gamma": [0.1, 1.0], "gamma_lr_divisor": [1.0]}],
        "1",
    )
    assert sorted((r.gamma, r.gamma_lr_divisor) for r in runs) == [
        (0.1, 1.0),
        (1.0, 1.0),
    ]


@pytest.mark.parametrize(
    "name, count",
    [
        ("table1a", (7 * 3 + 3) * 15),  # c grid x 3 lr + BASE per lr
        ("table1b", 3 * (3 * 2 + 2) * 15),  # 3 data sets, 3 c x 2 lr + BASE
        ("table2a", 6 * (3 * 2 + 2) * 15),  # 6 networks
        ("table2b", 4 * 2 * (4 + 3 + 1) * 15),  # 4 related + 3 c + BASE
        ("ablation-a1a2", (3 * 7 * 3 + 3) * 15),
        ("ablation-init-lr", (6 * 3 + 3 + 3) * 15),
        ("input-norm", 3 * 3 * 2 * 15),  # 3 norms x 3 lr, each with a BASE
        ("demo", 2 * 8),
    ],
)
def test_preset_counts(name, count):
    assert len(preset_runs(name)) == count


def test_unknown_preset_and_grid_field():
    with pytest.raises(ValueError, match="Unknown preset 'nope'.*table1a"):
        preset_runs("nope")
    with pytest.raises(ValueError, match=r"\['momentum'\] cannot vary"):
        expand([{"momentum": [0.5]}], "1")
    assert set(PRESETS) >= {"table1a", "table1b", "table2a", "table2b"}


class _Killed(BaseException):
    """Stands for the process being killed: not caught as a run failure."""


def test_killed_sweep_resumes_every_run_exactly_once(tmp_path):
    runs = expand([{"dataset": "digits", "gamma": 0.1}], "1-2", epochs=1)
    built = []

    def dies_on_third(name, **kwargs):
        # Builds: a program's model and each run's own (harness.programs):
        # run 1 builds twice, runs 2 (BASE, the same program) and 3 once.
        built.append(name)
        if len(built) == 4:
            raise _Killed()
        return tiny_builder(name, **kwargs)

    runs = [dataclasses.replace(r, model="tiny") for r in runs]
    with pytest.raises(_Killed):
        run_sweep(runs, tmp_path, quiet=True, build_model=dies_on_third)
    with ResultStore(tmp_path) as store:
        assert len(store) == 2
    counts = run_sweep(runs, tmp_path, quiet=True, build_model=tiny_builder)
    assert counts == {"total": 4, "skipped": 2, "ran": 2, "failed": 0}
    counts = run_sweep(runs, tmp_path, quiet=True, build_model=tiny_builder)
    assert counts == {"total": 4, "skipped": 4, "ran": 0, "failed": 0}
    with ResultStore(tmp_path) as store:
        records = store.records()
    keys = sorted((r["config"]["gamma"], r["config"]["seed"]) for r in records)
    assert keys == [(0.1, 1), (0.1, 2), (1.0, 1), (1.0, 2)]


def test_failed_runs_are_stored_and_retried_only_when_asked(tmp_path):
    runs = expand([{"dataset": "digits", "gamma": 0.1}], "1", epochs=1)
    runs = [dataclasses.replace(r, model="tiny") for r in runs]

    def broken_for_base(name, bn_gamma, **kwargs):
        if bn_gamma == 1.0:
            raise RuntimeError("cannot build: widths do not match")
        return tiny_builder(name, bn_gamma=bn_gamma, **kwargs)

    counts = run_sweep(runs, tmp_path, quiet=True, build_model=broken_for_base)
    assert counts["failed"] == 1
    with ResultStore(tmp_path) as store:
        (failed,) = store.records(status="failed")
    assert failed["reason"] == "RuntimeError: cannot build: widths do not match"
    counts = run_sweep(runs, tmp_path, quiet=True, build_model=tiny_builder)
    assert counts["ran"] == 0 and counts["skipped"] == 2
    counts = run_sweep(
        runs, tmp_path, quiet=True, retry_failed=True, build_model=tiny_builder
    )
    assert counts == {"total": 2, "skipped": 1, "ran": 1, "failed": 0}
    with ResultStore(tmp_path) as store:
        assert len(store.records(status="ok")) == 2
        assert store.records(status="failed") == []


def test_seeds_and_sweep_size_are_bounded():
    import time

    assert parse_seeds("2147483647") == [2**31 - 1]
    with pytest.raises(ValueError, match=r"Seeds must be < 2\*\*31"):
        parse_seeds("99999999999999999999")
    start = time.perf_counter()
    with pytest.raises(ValueError, match="Too many seeds: '1-100000000'"):
        parse_seeds("1-100000000")
    with pytest.raises(ValueError, match="more than 100000"):
        parse_seeds("1-60000,100001-160000")
    assert time.perf_counter() - start < 1.0  # checked before expanding
    assert len(parse_seeds("1-100000")) == 100_000
    with pytest.raises(ValueError, match=r"= 120000 runs, more than 100000"):
        expand([{"dataset": "digits", "gamma": 0.1}], "1-60000")


def test_claim_order_and_contract_names(tmp_path):
    # The executor interface (used by the Ray executor): claim_next hands
    # out claimed configs with `out` set, on_record stores and releases.
    from keras_bninit.harness.sweep import LocalExecutor

    runs = expand([{"dataset": "digits", "gamma": 0.1}], "1-2", epochs=1)
    runs = [dataclasses.replace(r, model="tiny") for r in runs]
    seen = []

    class Recording(LocalExecutor):
        def run(self, claim_next, on_record):
            def claim():
                config = claim_next()
                if config is not None:
                    with ResultStore(tmp_path) as store:
                        assert store.claims()[(config.key(), config.seed)][
                            0
                        ].endswith(tuple("0123456789abcdef"))
                    seen.append((config.seed, config.gamma, config.out))
                return config

            super().run(claim, on_record)

    counts = run_sweep(
        runs,
        tmp_path,
        quiet=True,
        executor=Recording(tiny_builder),
    )
    assert counts == {"total": 4, "skipped": 0, "ran": 4, "failed": 0}
    runs_dir = str(tmp_path / "runs")
    assert seen == [
        (1, 0.1, runs_dir),
        (1, 1.0, runs_dir),
        (2, 0.1, runs_dir),
        (2, 1.0, runs_dir),
    ]
    with ResultStore(tmp_path) as store:
        assert store.claims() == {} and len(store.records()) == 4


def test_a_sweep_directory_holds_one_backend(tmp_path):
    import json
    import os
    import subprocess
    import sys

    from keras_bninit.harness.report import write_report

    runs = expand([{"dataset": "digits", "gamma": 0.1}], "1", epochs=1)
    runs = [dataclasses.replace(r, model="tiny") for r in runs]
    run_sweep(runs, tmp_path, quiet=True, build_model=tiny_builder)
    with ResultStore(tmp_path) as store:
        (record, *_) = store.records()
        text, _ = write_report(store, str(tmp_path / "report"))
        assert text.splitlines()[0] == "Keras backend: tensorflow"
        # The same run as JAX would have trained it (a 0.2 JAX sweep).
        other = json.loads(json.dumps(record))
        other["versions"]["keras_backend"] = "jax"
        other["config"]["seed"] = 7
        store.put(other)
    with pytest.raises(ValueError, match="trained on the jax backend"):
        run_sweep(runs, tmp_path, quiet=True, build_model=tiny_builder)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run(
        [
            sys.executable,
            os.path.join(root, "train.py"),
            "sweep",
            "--dataset",
            "digits",
            "--gamma",
            "0.1",
            "--seeds",
            "1-2",
            "--epochs",
            "1",
            "--backend",
            "tensorflow",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--backend jax" in lines[0]
    assert "Traceback" not in result.stderr
