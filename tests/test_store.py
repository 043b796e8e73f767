"""The SQLite results store: one row per (configuration, seed)."""

import sqlite3
import threading

import numpy as np
import pytest

from keras_bninit.harness.store import ResultStore, canonical_config, config_key

CONFIG = {
    "dataset": "cifar10",
    "model": "resnet18",
    "lr": 0.1,
    "gamma": 0.1,
    "gamma_lr_divisor": 100,
    "weight_decay": 1e-4,
    "epochs": 180,
    "batch_size": 128,
}


def _record(seed, acc=0.9, status="ok", reason=None, **config):
    return {
        "config": {**CONFIG, "seed": seed, **config},
        "status": status,
        "reason": reason,
        "complex_seed": 123,
        "val_accuracy": acc,
        "test_accuracy": acc,
        "best_epoch": 3,
        "history": {"loss": [1.0, 0.5]},
        "wall_time_s": 1.5,
        "images_per_s": 100.0,
        "versions": {"keras": "3"},
    }


def test_config_key_is_canonical():
    key = config_key(CONFIG)
    assert key == config_key(dict(reversed(list(CONFIG.items()))))
    assert key == config_key({**CONFIG, "gamma_lr_divisor": 100.0})
    assert key == config_key({**CONFIG, "lr": np.float64(0.1)})
    assert key == config_key({**CONFIG, "seed": 7, "output_dir": "/tmp/x"})
    assert key == config_key({**CONFIG, "verbose": 2, "quiet": True})
    assert key == config_key({**CONFIG, "bn": "standard", "input_norm": "bn"})
    for change in ({"lr": 0.01}, {"bn": "rbn"}, {"epochs": 90}):
        assert key != config_key({**CONFIG, **change})
    assert len(key) == 16 and int(key, 16) >= 0


def test_later_fields_keep_stored_keys_at_their_default():
    key = config_key(CONFIG)  # a record written before the fields existed
    assert key == config_key({**CONFIG, "precise_bn": 0})
    assert key == config_key({**CONFIG, "torch_parity": False})
    assert key != config_key({**CONFIG, "precise_bn": 200})
    assert key != config_key({**CONFIG, "torch_parity": True})
    assert config_key({**CONFIG, "precise_bn": 200}) != config_key(
        {**CONFIG, "precise_bn": 50}
    )


def test_canonical_config_drops_seed_and_fills_defaults():
    canonical = canonical_config({**CONFIG, "seed": 3, "out_dir": "x"})
    assert "seed" not in canonical and "out_dir" not in canonical
    assert canonical["bn"] == "standard"
    assert canonical["epochs"] == 180.0
    assert list(canonical) == sorted(canonical)


def test_put_replace_and_no_duplicates(tmp_path):
    with ResultStore(tmp_path) as store:
        key, seed = store.put(_record(1, 0.5, status="failed", reason="NaN"))
        assert (key, seed) == (config_key(CONFIG), 1)
        assert store.failed(key, 1) and not store.completed(key, 1)
        store.put(_record(1, 0.91))
        store.put(_record(1, 0.92))
        store.put(_record(2, 0.93))
        assert len(store) == 2
        assert store.completed(key, 1) and not store.failed(key, 1)
        assert store.get(key, 1)["test_accuracy"] == 0.92
        assert store.status(key, 3) is None and store.get(key, 3) is None
        assert store.runs("ok") == {(key, 1), (key, 2)}


def test_persists_across_reopen(tmp_path):
    record = _record(4, np.float32(0.875))
    record["history"]["accuracy"] = np.array([0.5, 0.75], dtype=np.float32)
    ResultStore(tmp_path).put(record)
    store = ResultStore(tmp_path / "results.sqlite")
    (got,) = store.records()
    assert got["test_accuracy"] == 0.875
    assert got["history"] == {"loss": [1.0, 0.5], "accuracy": [0.5, 0.75]}
    assert got["config"]["seed"] == 4
    store.close()


def test_failed_runs_and_filters(tmp_path):
    store = ResultStore(tmp_path)
    store.put(_record(1, 0.9))
    store.put(_record(2, None, status="failed", reason="NaN loss"))
    store.put(_record(1, 0.7, lr=0.01))
    assert len(store.records()) == 2
    (failed,) = store.records(status="failed")
    assert failed["reason"] == "NaN loss"
    assert len(store.records(status=None)) == 3
    assert len(store.records(lr=0.01)) == 1
    assert len(store.records(dataset="cifar10", lr=0.1, status=None)) == 2
    key = config_key({**CONFIG, "lr": 0.01})
    assert [r["config"]["lr"] for r in store.records(config_key=key)] == [0.01]
    with pytest.raises(ValueError, match="Can filter only on"):
        store.records(epochs=180)


def test_rejects_bad_records(tmp_path):
    store = ResultStore(tmp_path)
    with pytest.raises(ValueError, match="status"):
        store.put({**_record(1), "status": "done"})
    with pytest.raises(ValueError, match="seed"):
        store.put({"config": dict(CONFIG), "status": "ok"})
    with pytest.raises(ValueError, match="seed"):
        store.put(_record(1.5))
    assert len(store) == 0


def test_wal_mode_and_concurrent_reader(tmp_path):
    writer = ResultStore(tmp_path)
    reader = ResultStore(tmp_path)
    mode = sqlite3.connect(writer.path).execute("PRAGMA journal_mode")
    assert mode.fetchone()[0] == "wal"
    writer.put(_record(1))
    assert reader.completed(config_key(CONFIG), 1)
    writer.put(_record(1, 0.5))
    assert reader.get(config_key(CONFIG), 1)["test_accuracy"] == 0.5
    writer.close()
    reader.close()


def test_concurrent_writers_never_duplicate(tmp_path):
    ResultStore(tmp_path).close()

    def write(offset):
        with ResultStore(tmp_path) as store:
            for seed in range(1, 11):
                # both threads write seeds 1..10: a restart racing a run
                store.put(_record(seed, 0.5 + offset))

    threads = [threading.Thread(target=write, args=(k,)) for k in (0, 0.1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    with ResultStore(tmp_path) as store:
        assert len(store) == 10
        assert sorted(r["config"]["seed"] for r in store.records()) == list(
            range(1, 11)
        )
