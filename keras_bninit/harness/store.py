"""The results store of one sweep directory (SQLite, standard library).

One row per (configuration, seed) holds the full result record as JSON, its
status ("ok" or "failed"), the failure reason, and a few indexed columns
(data set, model, learning rate, gamma, ...) for quick queries. Every write
is one transaction and rows are keyed by `(config_key, seed)`, so writing the
same run again replaces it: a sweep killed at any moment and restarted any
number of times ends with every (configuration, seed) exactly once. An "ok"
row is never replaced by a "failed" one. A row whose key is not its own
record's is left out of reads and set aside by the next sweep
(`harness.store_checks`).

Claims let several sweep processes share one directory: before training a
run, a process claims it (`claim`, one `BEGIN IMMEDIATE` transaction) under
an owner id `host:pid:token` and keeps the claim's heartbeat fresh; a claim
whose owner died (same host and its pid is gone, or its heartbeat is older
than `stale_after` seconds) is taken over. Writing the result and releasing
the claim is one transaction (`finish`).

The database runs in WAL mode, so reports can read it while a sweep writes.
SQLite's locking needs a local disk: one store per directory on a local file
system, not on a network file system.

A result record (what one run of the experiment produces) is a dict:

    {"config": {"dataset": ..., "model": ..., "lr": ..., "gamma": ...,
                "gamma_lr_divisor": ..., "bn": "standard",
                "input_norm": "bn", "seed": ..., ...},
     "status": "ok" | "failed", "reason": str | None,
     "complex_seed": ..., "val_accuracy": ..., "test_accuracy": ...,
     "best_epoch": ..., "history": {...}, "wall_time_s": ...,
     "images_per_s": ..., "versions": {...}}
"""

import datetime
import json
import math
import numbers
import os
import socket
import sqlite3
import threading
import time
import uuid
import warnings

from keras_bninit.harness.config import (  # noqa: F401  (the store's key)
    KEY_DEFAULTS,
    LATER_FIELDS,
    NON_RESULT_FIELDS,
    canonical_config,
    config_key,
)
from keras_bninit.harness.store_checks import (  # noqa: F401  (re-exported)
    APPLICATION_ID,
    StoreError,
    check_ours,
    checked_rows,
    damaged,
    set_aside,
)

STORE_FILENAME = "results.sqlite"

# A claim whose heartbeat is older than this many seconds is taken over
# (its owner is presumed dead or cut off); owners beat every
# `HEARTBEAT_EVERY_S` seconds.
STALE_AFTER_S = 120.0
HEARTBEAT_EVERY_S = 10.0
# Hosts sharing a sweep are assumed to have clocks within this many
# seconds; a heartbeat further in the future is another host's clock
# running ahead, and its claim is taken over (with a warning).
CLOCK_SKEW_S = 60.0


def new_owner_id():
    """A claim owner id, `host:pid:token`, unique to this process and call."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


def owner_alive(owner):
    """Whether a claim's owner may be alive, as far as this host can tell.

    On this host, a claim whose process id is gone is dead. Owners on other
    hosts (and unparseable ids) count as alive; their heartbeat decides.
    """
    host, _, rest = str(owner).partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: exists, owned by another user
        return True
    return True


STATUSES = ("ok", "failed")

# The indexed columns: (column, SQL type, config field).
_INDEXED = (
    ("dataset", "TEXT", "dataset"),
    ("model", "TEXT", "model"),
    ("lr", "REAL", "lr"),
    ("gamma", "REAL", "gamma"),
    ("gamma_lr_divisor", "REAL", "gamma_lr_divisor"),
    ("bn", "TEXT", "bn"),
    ("input_norm", "TEXT", "input_norm"),
)

_SCHEMA_VERSION = 1


def record_backends(records):
    """The Keras backends that trained `records`, sorted.

    A record without one counts as TensorFlow, the only backend before 0.2.
    """
    return sorted(
        {
            (r.get("versions") or {}).get("keras_backend") or "tensorflow"
            for r in records
        }
    )


def _json_default(value):
    # numpy scalars and arrays, as written by Keras histories
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"Not JSON serializable: {type(value).__name__}")


def _float_or_none(value):
    if value is None or isinstance(value, bool):
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _text_or_none(value):
    return None if value is None else str(value)


def _now_iso():
    return datetime.datetime.now(datetime.timezone.utc).isoformat()


_KEY_COLUMNS = ("config_key", "seed")


def _row(record):
    """The `runs` column names and values of one result record."""
    config = record.get("config")
    if not isinstance(config, dict):
        raise ValueError("A result record needs a 'config' dict.")
    if "seed" not in config:
        raise ValueError(
            f"A result record's config needs a 'seed'. Received: {config}"
        )
    seed = config["seed"]
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise ValueError(f"`seed` must be an integer. Received: {seed!r}")
    status = record.get("status")
    if status not in STATUSES:
        raise ValueError(
            f"`status` must be one of {STATUSES}. Received: {status!r}"
        )
    full = {**KEY_DEFAULTS, **config}
    indexed = [
        _text_or_none(full.get(field))
        if kind == "TEXT"
        else _float_or_none(full.get(field))
        for _, kind, field in _INDEXED
    ]
    names = [
        *_KEY_COLUMNS,
        "status",
        "reason",
        *(name for name, _, _ in _INDEXED),
        "test_accuracy",
        "config",
        "record",
        "written_at",
    ]
    row = [
        config_key(config),
        int(seed),
        status,
        record.get("reason"),
        *indexed,
        _float_or_none(record.get("test_accuracy")),
        json.dumps(canonical_config(config), sort_keys=True),
        json.dumps(record, default=_json_default),
        _now_iso(),
    ]
    return names, row


class ResultStore:
    """The SQLite results store of one sweep directory.

    Example:

    ```python
    store = ResultStore("runs/table1a")        # runs/table1a/results.sqlite
    store.put(record)                          # insert or replace
    store.completed(config_key(record["config"]), 3)
    ok_records = store.records(dataset="cifar10")
    ```

    Args:
        path: the sweep directory (created if missing; the database is
            `STORE_FILENAME` inside it) or a path ending in `.sqlite`/`.db`.
        timeout: seconds a writer waits for another writer's lock.

    Raises:
        StoreError: the file is not a SQLite database, or it is damaged
            (the message names the file).
    """

    def __init__(self, path, timeout=60.0):
        path = os.fspath(path)
        if not path.endswith((".sqlite", ".db")):
            os.makedirs(path, exist_ok=True)
            path = os.path.join(path, STORE_FILENAME)
        else:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self.path = path
        check_ours(path)  # before anything can write to a foreign file
        # One connection, usable from the heartbeat thread too (a lock
        # serializes its use).
        self._lock = threading.RLock()
        self._conn = sqlite3.connect(
            path, timeout=float(timeout), check_same_thread=False
        )
        self._conn.row_factory = sqlite3.Row
        try:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            check = self._conn.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise sqlite3.DatabaseError(check)
            self._create_schema()
        except sqlite3.OperationalError:
            # Locked, unwritable, disk full: the machine, not the file.
            self._conn.close()
            raise
        except sqlite3.DatabaseError as error:
            self._conn.close()
            raise damaged(path, error) from None

    def _create_schema(self):
        columns = ", ".join(f"{name} {kind}" for name, kind, _ in _INDEXED)
        with self._conn:
            self._conn.execute(
                """CREATE TABLE IF NOT EXISTS claims (
                    config_key TEXT NOT NULL,
                    seed INTEGER NOT NULL,
                    owner TEXT NOT NULL,
                    heartbeat REAL NOT NULL,
                    claimed_at TEXT NOT NULL,
                    PRIMARY KEY (config_key, seed)
                )"""
            )
            self._conn.execute(
                f"""CREATE TABLE IF NOT EXISTS runs (
                    config_key TEXT NOT NULL,
                    seed INTEGER NOT NULL,
                    status TEXT NOT NULL CHECK (status IN ('ok', 'failed')),
                    reason TEXT,
                    {columns},
                    test_accuracy REAL,
                    config TEXT NOT NULL,
                    record TEXT NOT NULL,
                    written_at TEXT NOT NULL,
                    PRIMARY KEY (config_key, seed)
                )"""
            )
            self._conn.execute(
                "CREATE INDEX IF NOT EXISTS runs_cell "
                "ON runs (dataset, model, lr, gamma, gamma_lr_divisor)"
            )
            self._conn.execute(
                "CREATE INDEX IF NOT EXISTS runs_status ON runs (status)"
            )
            self._conn.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")
            self._conn.execute(f"PRAGMA application_id={APPLICATION_ID}")

    # -- writing ----------------------------------------------------------

    def put(self, record):
        """Writes one result record, replacing a row of the same run.

        A "failed" record never replaces an "ok" row (the stored success
        stays; the write is a no-op).

        Args:
            record: a result record (see the module docstring) with a
                "config" holding an integer "seed", and "status" "ok" or
                "failed".

        Returns:
            The record's `(config_key, seed)`.
        """
        return self._store(record, owner=None)

    def _store(self, record, owner):
        names, row = _row(record)
        with self._lock, self._conn:  # one transaction per run
            self._upsert(names, row)
            if owner is not None:
                self._conn.execute(
                    "DELETE FROM claims WHERE config_key = ? AND seed = ? "
                    "AND owner = ?",
                    (row[0], row[1], owner),
                )
            self._end_claims(row[0], row[1])
        return row[0], row[1]

    def _end_claims(self, key, seed):
        """A run stored ok is nobody's to train: every claim on it ends,
        also one left by a dead process, which no `release` deletes. (A
        failed run's claim may be a live `--retry-failed` sweep's.)"""
        self._conn.execute(
            "DELETE FROM claims WHERE config_key = ? AND seed = ? AND EXISTS "
            "(SELECT 1 FROM runs WHERE runs.config_key = claims.config_key "
            "AND runs.seed = claims.seed AND runs.status = 'ok')",
            (key, seed),
        )

    def _upsert(self, names, row):
        placeholders = ", ".join("?" for _ in names)
        updates = ", ".join(
            f"{n} = excluded.{n}" for n in names if n not in _KEY_COLUMNS
        )
        self._conn.execute(
            f"INSERT INTO runs ({', '.join(names)}) VALUES ({placeholders}) "
            f"ON CONFLICT (config_key, seed) DO UPDATE SET {updates} "
            "WHERE runs.status != 'ok' OR excluded.status = 'ok'",
            row,
        )

    # -- claims -----------------------------------------------------------

    def claim(
        self, config_key, seed, owner, retry_before=None, stale_after=None
    ):
        """Atomically claims one run for `owner`.

        One `BEGIN IMMEDIATE` transaction reads the run's row and claim and
        takes the claim when it is free, already `owner`'s, or held by a
        dead owner (`owner_alive` false, or a heartbeat older than
        `stale_after` seconds).

        Args:
            config_key, seed: the run.
            owner: the claimant's id (`new_owner_id()`).
            retry_before: None (a "failed" row counts as done) or a time
                (`time.time()`): "failed" rows written before it are run
                again (`--retry-failed`), newer ones count as done.
            stale_after: seconds; defaults to `STALE_AFTER_S`.

        Returns:
            "claimed" (train it, then `finish` or `release`), "done" (the
            store holds it) or "busy" (a live owner holds it). When a dead
            owner's claim is taken over, "claimed" comes with the previous
            owner in `self.last_takeover` (else None).
        """
        stale_after = STALE_AFTER_S if stale_after is None else stale_after
        self.last_takeover = None
        seed = int(seed)
        now = time.time()
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                result = self._claim(
                    config_key, seed, owner, retry_before, stale_after, now
                )
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
        return result

    def _claim(self, key, seed, owner, retry_before, stale_after, now):
        run = self._conn.execute(
            "SELECT status, written_at FROM runs "
            "WHERE config_key = ? AND seed = ?",
            (key, seed),
        ).fetchone()
        if run is not None:
            done = run["status"] == "ok" or retry_before is None
            if not done:  # failed again during this retry sweep?
                written = datetime.datetime.fromisoformat(run["written_at"])
                done = written.timestamp() >= retry_before
            if done:
                self._end_claims(key, seed)  # a claim that outlived its run
                return "done"
        held = self._conn.execute(
            "SELECT owner, heartbeat FROM claims "
            "WHERE config_key = ? AND seed = ?",
            (key, seed),
        ).fetchone()
        if held is not None and held["owner"] != owner:
            skew = held["heartbeat"] - now
            if skew > CLOCK_SKEW_S:  # a clock ahead: the beat proves nothing
                warnings.warn(
                    f"The claim of {held['owner']} on run {key} seed {seed} "
                    f"has a heartbeat {skew:.0f} s in the future (clocks may "
                    f"differ by at most {CLOCK_SKEW_S:.0f} s); taking it over",
                    RuntimeWarning,
                    stacklevel=4,
                )
            elif now - held["heartbeat"] < stale_after and owner_alive(
                held["owner"]
            ):
                return "busy"
            self.last_takeover = held["owner"]
        self._conn.execute(
            "INSERT OR REPLACE INTO claims "
            "(config_key, seed, owner, heartbeat, claimed_at) "
            "VALUES (?, ?, ?, ?, ?)",
            (key, seed, owner, now, _now_iso()),
        )
        return "claimed"

    def finish(self, record, owner):
        """`put(record)` and the release of `owner`'s claim (of every claim
        when the run is ok), in one transaction."""
        return self._store(record, owner)

    def release(self, config_key, seed, owner):
        """Drops `owner`'s claim of one run (no error when it holds none)."""
        with self._lock, self._conn:
            self._conn.execute(
                "DELETE FROM claims WHERE config_key = ? AND seed = ? "
                "AND owner = ?",
                (config_key, int(seed), owner),
            )

    def release_all(self, owner):
        """Drops every claim of `owner`; returns how many it held."""
        with self._lock, self._conn:
            return self._conn.execute(
                "DELETE FROM claims WHERE owner = ?", (owner,)
            ).rowcount

    def heartbeat(self, owner):
        """Refreshes the heartbeat of every claim of `owner`."""
        with self._lock, self._conn:
            self._conn.execute(
                "UPDATE claims SET heartbeat = ? WHERE owner = ?",
                (time.time(), owner),
            )

    def claims(self):
        """`{(config_key, seed): (owner, heartbeat)}` of every claim held."""
        rows = self._query(
            "SELECT config_key, seed, owner, heartbeat FROM claims"
        )
        return {
            (r["config_key"], r["seed"]): (r["owner"], r["heartbeat"])
            for r in rows
        }

    def clear_claims_of_stored_runs(self):
        """Deletes every claim on a run stored ok (a claim that outlived its
        run: a driver lost between a run's end and its row); returns how
        many."""
        with self._lock, self._conn:
            return self._conn.execute(
                "DELETE FROM claims WHERE EXISTS (SELECT 1 FROM runs WHERE "
                "runs.config_key = claims.config_key AND runs.seed = "
                "claims.seed AND runs.status = 'ok')"
            ).rowcount

    def set_aside_bad_rows(self):
        """Moves the rows that do not match their own record out of `runs`
        (see `harness.store_checks`), warning once per row; returns their
        `(config_key, seed, problem)`. A sweep does this at start, so their
        runs are done again."""
        return set_aside(self._conn, self._lock, self.path)

    def delete(self, config_key, seed):
        """Removes one run's row (no error when there is none)."""
        with self._lock, self._conn:
            self._conn.execute(
                "DELETE FROM runs WHERE config_key = ? AND seed = ?",
                (config_key, int(seed)),
            )

    # -- reading ----------------------------------------------------------

    def status(self, config_key, seed):
        """The stored status of a run: "ok", "failed", or None if absent."""
        row = self._query(
            "SELECT status FROM runs WHERE config_key = ? AND seed = ?",
            (config_key, int(seed)),
        )
        row = row[0] if row else None
        return None if row is None else row["status"]

    def completed(self, config_key, seed):
        """Whether the run is stored with status "ok"."""
        return self.status(config_key, seed) == "ok"

    def failed(self, config_key, seed):
        """Whether the run is stored with status "failed"."""
        return self.status(config_key, seed) == "failed"

    def get(self, config_key, seed):
        """The stored record of a run, or None if absent."""
        row = self._query(
            "SELECT record FROM runs WHERE config_key = ? AND seed = ?",
            (config_key, int(seed)),
        )
        row = row[0] if row else None
        return None if row is None else json.loads(row["record"])

    def runs(self, status=None):
        """The `(config_key, seed)` pairs stored, optionally by status.

        A sweep uses this once to skip runs without one query per run.
        """
        query, args = "SELECT config_key, seed FROM runs", ()
        if status is not None:
            query, args = query + " WHERE status = ?", (status,)
        return {(r["config_key"], r["seed"]) for r in self._query(query, args)}

    def records(self, status="ok", config_key=None, **filters):
        """The stored records, ordered by (config_key, seed).

        Args:
            status: "ok" (default), "failed", or None for both.
            config_key: only this configuration's seeds.
            **filters: equality filters on the indexed columns, e.g.
                `dataset="cifar10", lr=0.1`.

        Returns:
            A list of record dicts, ordered by (config_key, seed). A row
            that does not match its own record (`harness.store_checks`) is
            left out, with a `StoreRowWarning` naming it.
        """
        indexed = {name for name, _, _ in _INDEXED}
        unknown = set(filters) - indexed
        if unknown:
            raise ValueError(
                f"Can filter only on {sorted(indexed)}. "
                f"Received: {sorted(unknown)}"
            )
        where, args = [], []
        if status is not None:
            if status not in STATUSES:
                raise ValueError(
                    f"`status` must be one of {STATUSES} or None. "
                    f"Received: {status!r}"
                )
            where.append("status = ?")
            args.append(status)
        if config_key is not None:
            where.append("config_key = ?")
            args.append(config_key)
        for name, value in sorted(filters.items()):
            where.append(f"{name} = ?")
            args.append(value)
        query = "SELECT config_key, seed, record FROM runs"
        if where:
            query += " WHERE " + " AND ".join(where)
        query += " ORDER BY config_key, seed"
        rows = self._query(query, args)
        return [record for _, _, record in checked_rows(self.path, rows)]

    def _query(self, query, args=()):
        with self._lock:
            return self._conn.execute(query, args).fetchall()

    def __len__(self):
        return self._query("SELECT COUNT(*) FROM runs")[0][0]

    def close(self):
        """Closes the connection (the file stays)."""
        self._conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()
