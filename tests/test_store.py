"""The SQLite results store: one row per (configuration, seed)."""

import os
import socket
import sqlite3
import stat
import threading
import time

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
    assert key == config_key({**CONFIG, "seed": 7, "out": "/tmp/x"})
    assert key == config_key({**CONFIG, "verbose": 2, "data_dir": "/d"})
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
    canonical = canonical_config({**CONFIG, "seed": 3, "out": "x"})
    assert "seed" not in canonical and "out" not in canonical
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


def test_failed_never_replaces_ok(tmp_path):
    with ResultStore(tmp_path) as store:
        key, _ = store.put(_record(1, 0.91))
        store.put(_record(1, None, status="failed", reason="FileNotFoundError"))
        assert store.status(key, 1) == "ok"
        assert store.get(key, 1)["test_accuracy"] == 0.91
        store.put(_record(2, None, status="failed", reason="NaN"))
        store.put(_record(2, 0.8))  # ok replaces failed
        assert store.get(key, 2)["test_accuracy"] == 0.8


def _dead_pid():
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_claims_exactly_one_owner_and_takeover(tmp_path):
    import socket

    from keras_bninit.harness.store import new_owner_id, owner_alive

    host = socket.gethostname()
    me = new_owner_id()
    assert me.startswith(f"{host}:{os.getpid()}:") and owner_alive(me)
    other = f"{host}:{os.getppid()}:x"  # alive: our parent process
    dead = f"{host}:{_dead_pid()}:x"
    assert owner_alive(other) and not owner_alive(dead)
    key = config_key(CONFIG)
    with ResultStore(tmp_path) as store:
        assert store.claim(key, 1, me) == "claimed"
        assert store.claim(key, 1, me) == "claimed"  # idempotent
        assert store.claim(key, 1, other) == "busy"
        ((owner, beat),) = store.claims().values()
        assert owner == me and abs(beat - time.time()) < 5
        store.finish(_record(1), me)
        assert store.claims() == {}
        assert store.claim(key, 1, other) == "done"
        # A dead owner on this host: taken over at once.
        assert store.claim(key, 2, dead) == "claimed"
        assert store.claim(key, 2, me) == "claimed"
        assert store.last_takeover == dead
        # Another host: alive until its heartbeat is stale.
        remote = "elsewhere:1:x"
        assert store.claim(key, 3, remote) == "claimed"
        assert store.claim(key, 3, me) == "busy"
        assert store.claim(key, 3, me, stale_after=0.0) == "claimed"
        assert store.last_takeover == remote
        store.heartbeat(me)
        assert store.release_all(me) == 2
        assert store.claims() == {}


def test_claim_of_failed_runs_and_retry(tmp_path):
    key = config_key(CONFIG)
    with ResultStore(tmp_path) as store:
        store.put(_record(1, None, status="failed", reason="NaN"))
        assert store.claim(key, 1, "h:1:a") == "done"
        start = time.time()
        assert store.claim(key, 1, "h:1:a", retry_before=start) == "claimed"
        store.finish(_record(1, None, status="failed", reason="NaN"), "h:1:a")
        # Failed again during this retry sweep: not retried a second time.
        assert store.claim(key, 1, "h:1:b", retry_before=start) == "done"


def test_heartbeat_refreshes_only_own_claims(tmp_path):
    key = config_key(CONFIG)
    with ResultStore(tmp_path) as store:
        store.claim(key, 1, "elsewhere:1:a")
        store.claim(key, 2, "elsewhere:1:b")
        time.sleep(0.05)
        before = store.claims()
        store.heartbeat("elsewhere:1:a")
        after = store.claims()
        assert after[(key, 1)][1] > before[(key, 1)][1]
        assert after[(key, 2)][1] == before[(key, 2)][1]


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_damaged_store_is_named(tmp_path, damage):
    from keras_bninit.harness.store import StoreError

    path = tmp_path / "results.sqlite"
    if damage == "garbage":
        path.write_bytes(b"this is not a database" * 100)
    else:
        with ResultStore(tmp_path) as store:
            for seed in range(200):
                store.put(_record(seed))
        con = sqlite3.connect(path)
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        con.close()
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    with pytest.raises(StoreError, match=f"'{path}' is not a results store"):
        ResultStore(tmp_path)


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_json_outputs_follow_the_umask(tmp_path, umask):
    from keras_bninit.harness import _io

    old = os.umask(umask)
    try:
        path = tmp_path / "out.json"
        _io.atomic_write_json(path, {"a": 1})
        _io.atomic_write_json(path, {"a": 2})  # replacing keeps the rule
        plain = tmp_path / "plain"
        plain.write_text("")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~umask
    assert stat.S_IMODE(os.stat(plain).st_mode) == 0o666 & ~umask
    assert _io.read_json(path) == {"a": 2}


@pytest.mark.parametrize(
    "schema",
    [
        "CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)",
        "CREATE TABLE runs (id INTEGER PRIMARY KEY, started TEXT)",
    ],
)
def test_another_programs_database_is_refused_unchanged(tmp_path, schema):
    from keras_bninit.harness.store import StoreError

    path = tmp_path / "results.sqlite"
    con = sqlite3.connect(path)
    con.execute(schema)
    con.execute("PRAGMA user_version=7")
    con.commit()
    con.close()
    before = path.read_bytes()
    with pytest.raises(StoreError, match="another program's SQLite database"):
        ResultStore(tmp_path)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["results.sqlite"]


def test_a_store_being_created_by_another_process_opens(tmp_path):
    # Two sweeps starting together: one sees the SQLite file the other has
    # just made, before its tables are committed (a CI failure, once).
    path = tmp_path / "results.sqlite"
    con = sqlite3.connect(path)
    con.execute("PRAGMA user_version=0")
    con.execute("PRAGMA journal_mode=WAL")
    con.commit()
    con.close()
    assert path.stat().st_size > 0
    with ResultStore(tmp_path) as store:
        store.put(_record(1))
        assert len(store.records()) == 1


def test_stores_are_stamped_and_older_unstamped_ones_open(tmp_path):
    from keras_bninit.harness.store import APPLICATION_ID

    with ResultStore(tmp_path / "new") as store:
        store.put(_record(1))
    con = sqlite3.connect(tmp_path / "new" / "results.sqlite")
    assert con.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
    con.execute("PRAGMA application_id=0")  # as 0.2 wrote them
    con.commit()
    con.close()
    with ResultStore(tmp_path / "new") as store:
        assert len(store) == 1


def test_a_claim_beating_in_the_future_is_taken_over_with_a_warning(tmp_path):
    from keras_bninit.harness.store import CLOCK_SKEW_S, new_owner_id

    me, remote = new_owner_id(), "fast-clock-host:1:x"
    key = config_key(CONFIG)
    with ResultStore(tmp_path) as store:
        for seed, ahead in ((1, CLOCK_SKEW_S / 2), (2, 3600.0)):
            assert store.claim(key, seed, remote) == "claimed"
            con = sqlite3.connect(store.path)
            con.execute(
                "UPDATE claims SET heartbeat = ? WHERE seed = ?",
                (time.time() + ahead, seed),
            )
            con.commit()
            con.close()
        # Within the margin: a live owner whose clock runs a little ahead.
        assert store.claim(key, 1, me) == "busy"
        with pytest.warns(
            RuntimeWarning,
            match=r"fast-clock-host:1:x .* seed 2 has a heartbeat 3\d{3} s in "
            r"the future \(clocks may differ by at most 60 s\)",
        ):
            assert store.claim(key, 2, me) == "claimed"
        assert store.last_takeover == remote


def test_an_aborted_process_leaves_a_claim_taken_over_at_once(tmp_path):
    import subprocess
    import sys

    code = (
        "import os, sys\n"
        "from keras_bninit.harness.store import ResultStore, new_owner_id\n"
        "store = ResultStore(sys.argv[1])\n"
        "assert store.claim('k', 1, new_owner_id()) == 'claimed'\n"
        "os.abort()\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], capture_output=True
    )
    assert result.returncode in (-6, 134)  # SIGABRT, as std::bad_alloc ends
    with ResultStore(tmp_path) as store:
        (owner,) = [o for o, _ in store.claims().values()]
        assert store.claim("k", 1, "somebody:1:y", stale_after=1e9) == "claimed"
        assert store.last_takeover == owner


# -- rows checked against their own record (issue 28, item 7) ----------------


class _Recorded:
    """An executor that stores a made-up record for each run it claims,
    without training (the sweep's bookkeeping is what is tested)."""

    build_model = "not used"

    def __init__(self):
        self.ran = []

    def run(self, claim_next, on_record):
        import dataclasses

        import keras

        while (config := claim_next()) is not None:
            self.ran.append((config.key(), config.seed))
            accuracy = 0.8 + config.seed / 100 + (config.gamma != 1.0) / 50
            record = {
                "config": dataclasses.asdict(config),
                "status": "ok",
                "test_accuracy": accuracy,
                "versions": {"keras_backend": keras.backend.backend()},
            }
            on_record(config, record, {"node": "here", "seconds": 0.0})


def _sweep_configs(add_base=True):
    from keras_bninit.harness.presets import expand

    return expand(
        [{"dataset": "digits", "gamma": 0.1}],
        "1-2",
        epochs=1,
        add_base=add_base,
    )


@pytest.mark.parametrize("tamper", ["key", "truncated"])
def test_a_tampered_row_is_set_aside_and_its_run_done_again(tmp_path, tamper):
    import warnings

    from keras_bninit.harness.report import build_tables
    from keras_bninit.harness.store_checks import StoreRowWarning
    from keras_bninit.harness.sweep import run_sweep

    ours = _sweep_configs(add_base=False)  # c = 0.1, seeds 1 and 2
    everything = _sweep_configs()  # and BASE, seeds 1 and 2
    key, base_key = ours[0].key(), everything[1].key()
    assert everything[1].gamma == 1.0 and base_key != key
    first = _Recorded()
    run_sweep(ours, tmp_path, quiet=True, executor=first)
    assert first.ran == [(key, 1), (key, 2)]
    con = sqlite3.connect(tmp_path / "results.sqlite")
    if tamper == "key":  # another configuration's key: BASE's
        con.execute(
            "UPDATE runs SET config_key = ? WHERE config_key = ? AND seed = 1",
            (base_key, key),
        )
        row, problem = (base_key, 1), f"whose key is {key}"
    else:  # a record cut off mid-way
        con.execute(
            "UPDATE runs SET record = substr(record, 1, 40) WHERE seed = 1"
        )
        row, problem = (key, 1), "a record that is not valid JSON"
    con.commit()
    con.close()

    again = _Recorded()
    with pytest.warns(StoreRowWarning) as caught:
        counts = run_sweep(everything, tmp_path, quiet=True, executor=again)
    lines = [str(w.message) for w in caught if w.category is StoreRowWarning]
    assert len(lines) == 1
    assert f"row config_key={row[0]} seed={row[1]} " in lines[0]
    assert (
        problem in lines[0] and "set aside in table runs_set_aside" in lines[0]
    )
    # c = 0.1's seed 1 is done again, BASE's seeds run; seed 2 was done.
    assert sorted(again.ran) == sorted([(key, 1), (base_key, 1), (base_key, 2)])
    assert counts == {"total": 4, "skipped": 1, "ran": 3, "failed": 0}

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no row left that is warned about
        with ResultStore(tmp_path) as store:
            records = store.records(status=None)
            (table,) = build_tables(store)  # no "Two records for the same run"
    runs = sorted(
        (config_key(r["config"]), r["config"]["seed"]) for r in records
    )
    assert runs == sorted([(key, 1), (key, 2), (base_key, 1), (base_key, 2)])
    assert {r["status"] for r in records} == {"ok"}
    assert [c.stats["n_ours"] for c in table.cells.values()] == [2, 2]
    con = sqlite3.connect(tmp_path / "results.sqlite")
    kept = con.execute("SELECT config_key, seed, problem FROM runs_set_aside")
    ((kept_key, kept_seed, kept_problem),) = kept.fetchall()
    con.close()
    assert (kept_key, kept_seed) == row and problem in kept_problem
    # A third sweep finds everything done, with nothing to warn about.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        counts = run_sweep(
            everything, tmp_path, quiet=True, executor=_Recorded()
        )
    assert counts == {"total": 4, "skipped": 4, "ran": 0, "failed": 0}


def test_reads_leave_out_a_row_that_is_not_its_records(tmp_path):
    from keras_bninit.harness.store_checks import StoreRowWarning

    with ResultStore(tmp_path) as store:
        for seed in (1, 2):
            store.put(_record(seed, acc=0.5 + seed / 10))
        key = config_key(_record(1)["config"])
        store._conn.execute(  # as a tool would rewrite it
            "UPDATE runs SET config_key = 'feedfacefeedface' WHERE seed = 2"
        )
        store._conn.commit()
        with pytest.warns(
            StoreRowWarning, match="config_key=feedfacefeedface "
        ):
            records = store.records()
        assert [r["test_accuracy"] for r in records] == [0.6]
        assert store.runs() == {(key, 1), ("feedfacefeedface", 2)}


def test_rows_of_a_0_2_store_match_their_records(tmp_path):
    import shutil
    import warnings

    source = os.path.join(os.path.dirname(__file__), "data", "store-0.2")
    shutil.copy(os.path.join(source, "results.sqlite"), tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with ResultStore(tmp_path) as store:
            assert store.set_aside_bad_rows() == []
            assert len(store.records()) == len(store) == 5


# -- claims end with their run (issue 30) -------------------------------------


class _RecordedWithFolders(_Recorded):
    """Also writes each run's result.json, as a real run does."""

    def run(self, claim_next, on_record):
        from keras_bninit.harness import _io

        def write_then_store(config, record, where):
            run_dir = os.path.join(config.out, config.run_name())
            os.makedirs(run_dir, exist_ok=True)
            record = {
                **record,
                "val_accuracy": record["test_accuracy"],
                "best_epoch": 1,
            }
            _io.atomic_write_json(os.path.join(run_dir, "result.json"), record)
            on_record(config, record, where)

        super().run(claim_next, write_then_store)


def test_a_claim_outliving_its_run_is_cleared(tmp_path):
    """A driver lost after a run's result.json was written but before its
    row: the next sweep stores the row from the file (reconcile), and the
    dead driver's claim on that run goes with it; a claim on a run stored
    ok is also cleared when a sweep meets it."""
    from keras_bninit.harness.sweep import run_sweep

    configs = _sweep_configs(add_base=False)
    run_sweep(configs, tmp_path, quiet=True, executor=_RecordedWithFolders())
    key = configs[0].key()
    dead = f"{socket.gethostname()}:{_dead_pid()}:x"
    con = sqlite3.connect(tmp_path / "results.sqlite")
    con.execute("DELETE FROM runs WHERE config_key = ? AND seed = 1", (key,))
    for seed in (1, 2):  # seed 2's row stays: a claim that outlived it
        con.execute(
            "INSERT INTO claims (config_key, seed, owner, heartbeat, "
            "claimed_at) VALUES (?, ?, ?, ?, '2026-01-01T00:00:00')",
            (key, seed, dead, time.time()),
        )
    con.commit()
    con.close()
    again = _RecordedWithFolders()
    counts = run_sweep(configs, tmp_path, quiet=True, executor=again)
    assert again.ran == []  # seed 1 came back from its result.json
    assert counts == {"total": 2, "skipped": 2, "ran": 0, "failed": 0}
    with ResultStore(tmp_path) as store:
        assert store.claims() == {}
        assert sorted(store.runs("ok")) == [(key, 1), (key, 2)]


def test_storing_a_run_ends_every_claim_on_it(tmp_path):
    with ResultStore(tmp_path) as store:
        key, _ = store.put(_record(1, status="failed"))
        other = f"{socket.gethostname()}:{_dead_pid()}:x"
        assert store.claim(key, 1, other, retry_before=time.time() + 1) == (
            "claimed"
        )
        store.put(_record(1, status="failed"))  # a failed run: kept
        assert list(store.claims()) == [(key, 1)]
        store.put(_record(1))  # stored ok: nobody's to train
        assert store.claims() == {}
        # finish() of a failed record releases only the finisher's claim.
        store.claim(key, 2, other)
        store.finish(_record(2, status="failed"), "someone-else")
        assert list(store.claims()) == [(key, 2)]
        store.finish(_record(2, status="failed"), other)
        assert store.claims() == {}
