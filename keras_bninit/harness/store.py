"""The results store of one sweep directory (SQLite, standard library).

One row per (configuration, seed) holds the full result record as JSON, its
status ("ok" or "failed"), the failure reason, and a few indexed columns
(data set, model, learning rate, gamma, ...) for quick queries. Every write
is one transaction and rows are keyed by `(config_key, seed)`, so writing the
same run again replaces it: a sweep killed at any moment and restarted any
number of times ends with every (configuration, seed) exactly once.

The database runs in WAL mode, so reports can read it while a sweep writes.

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
import hashlib
import json
import math
import numbers
import os
import sqlite3

STORE_FILENAME = "results.sqlite"

STATUSES = ("ok", "failed")

# Configuration fields that never change a run's result: where it writes,
# how much it prints, how the sweep is driven. `config_key` leaves them out
# (and the seed, which is the second half of the key).
NON_RESULT_FIELDS = frozenset(
    {
        "seed",
        "output_dir",
        "out_dir",
        "sweep_dir",
        "run_dir",
        "log_dir",
        "checkpoint_dir",
        "verbose",
        "verbosity",
        "quiet",
        "progress",
        "dry_run",
        "retry_failed",
        # harness.experiment.RunConfig fields about paths and output:
        "out",
        "export",
        "diagnostics",
        "data_dir",
    }
)

# Defaults filled in before hashing, so a configuration that spells a
# default out and one that leaves it implicit get the same key.
CONFIG_DEFAULTS = {"bn": "standard", "input_norm": "bn"}

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


def _canonical(value):
    """Turns a config value into a JSON-ready value with one spelling.

    Numbers become floats (so `1`, `1.0` and `numpy.float32(1)` agree),
    tuples become lists, mappings get sorted keys.
    """
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, numbers.Real):
        value = float(value)
        if not math.isfinite(value):
            return repr(value)  # JSON has no NaN/inf; keep them distinct
        return value
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in sorted(value.items())}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        return _canonical(value.tolist())
    raise TypeError(
        f"Config values must be numbers, strings, booleans, None, lists or "
        f"dicts. Received: {value!r} of type {type(value).__name__}"
    )


def canonical_config(config):
    """The configuration that `config_key` hashes, as a sorted dict.

    Fields in `NON_RESULT_FIELDS` (the seed, output directories, verbosity,
    sweep flags) are dropped, `CONFIG_DEFAULTS` are filled in and every
    number becomes a float.

    Args:
        config: mapping of configuration fields (a record's "config").

    Returns:
        A new dict with sorted keys.
    """
    if not isinstance(config, dict):
        raise TypeError(
            f"`config` must be a dict. Received: {type(config).__name__}"
        )
    full = {**CONFIG_DEFAULTS, **config}
    kept = {k: v for k, v in full.items() if k not in NON_RESULT_FIELDS}
    return _canonical(kept)


def config_key(config):
    """A stable key for a configuration, the same for all its seeds.

    The key is the first 16 hex digits of the SHA-256 of the canonical JSON
    of `canonical_config(config)`: it does not depend on the order of the
    fields, on `1` versus `1.0`, on the seed or on the fields listed in
    `NON_RESULT_FIELDS`; every other field (data set, model, learning rate,
    gamma, divisor, weight decay, epochs, batch size, bn, input_norm, ...)
    changes it.

    Args:
        config: mapping of configuration fields (a record's "config").

    Returns:
        A 16-character hex string.
    """
    text = json.dumps(canonical_config(config), sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


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
    """

    def __init__(self, path, timeout=60.0):
        path = os.fspath(path)
        if not path.endswith((".sqlite", ".db")):
            os.makedirs(path, exist_ok=True)
            path = os.path.join(path, STORE_FILENAME)
        else:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self.path = path
        self._conn = sqlite3.connect(path, timeout=float(timeout))
        self._conn.row_factory = sqlite3.Row
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._create_schema()

    def _create_schema(self):
        columns = ", ".join(f"{name} {kind}" for name, kind, _ in _INDEXED)
        with self._conn:
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

    # -- writing ----------------------------------------------------------

    def put(self, record):
        """Writes one result record, replacing any row of the same run.

        Args:
            record: a result record (see the module docstring) with a
                "config" holding an integer "seed", and "status" "ok" or
                "failed".

        Returns:
            The record's `(config_key, seed)`.
        """
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
        key = config_key(config)
        full = {**CONFIG_DEFAULTS, **config}
        indexed = [
            _text_or_none(full.get(field))
            if kind == "TEXT"
            else _float_or_none(full.get(field))
            for _, kind, field in _INDEXED
        ]
        names = [name for name, _, _ in _INDEXED]
        row = [
            key,
            int(seed),
            status,
            record.get("reason"),
            *indexed,
            _float_or_none(record.get("test_accuracy")),
            json.dumps(canonical_config(config), sort_keys=True),
            json.dumps(record, default=_json_default),
            datetime.datetime.now(datetime.timezone.utc).isoformat(),
        ]
        all_names = [
            "config_key",
            "seed",
            "status",
            "reason",
            *names,
            "test_accuracy",
            "config",
            "record",
            "written_at",
        ]
        placeholders = ", ".join("?" for _ in all_names)
        with self._conn:  # one transaction per run
            self._conn.execute(
                f"INSERT OR REPLACE INTO runs ({', '.join(all_names)}) "
                f"VALUES ({placeholders})",
                row,
            )
        return key, int(seed)

    def delete(self, config_key, seed):
        """Removes one run's row (no error when there is none)."""
        with self._conn:
            self._conn.execute(
                "DELETE FROM runs WHERE config_key = ? AND seed = ?",
                (config_key, int(seed)),
            )

    # -- reading ----------------------------------------------------------

    def status(self, config_key, seed):
        """The stored status of a run: "ok", "failed", or None if absent."""
        row = self._conn.execute(
            "SELECT status FROM runs WHERE config_key = ? AND seed = ?",
            (config_key, int(seed)),
        ).fetchone()
        return None if row is None else row["status"]

    def completed(self, config_key, seed):
        """Whether the run is stored with status "ok"."""
        return self.status(config_key, seed) == "ok"

    def failed(self, config_key, seed):
        """Whether the run is stored with status "failed"."""
        return self.status(config_key, seed) == "failed"

    def get(self, config_key, seed):
        """The stored record of a run, or None if absent."""
        row = self._conn.execute(
            "SELECT record FROM runs WHERE config_key = ? AND seed = ?",
            (config_key, int(seed)),
        ).fetchone()
        return None if row is None else json.loads(row["record"])

    def runs(self, status=None):
        """The `(config_key, seed)` pairs stored, optionally by status.

        A sweep uses this once to skip runs without one query per run.
        """
        query, args = "SELECT config_key, seed FROM runs", ()
        if status is not None:
            query, args = query + " WHERE status = ?", (status,)
        return {
            (r["config_key"], r["seed"])
            for r in self._conn.execute(query, args)
        }

    def records(self, status="ok", config_key=None, **filters):
        """The stored records, ordered by (config_key, seed).

        Args:
            status: "ok" (default), "failed", or None for both.
            config_key: only this configuration's seeds.
            **filters: equality filters on the indexed columns, e.g.
                `dataset="cifar10", lr=0.1`.

        Returns:
            A list of record dicts, ordered by (config_key, seed).
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
        query = "SELECT record FROM runs"
        if where:
            query += " WHERE " + " AND ".join(where)
        query += " ORDER BY config_key, seed"
        return [
            json.loads(r["record"]) for r in self._conn.execute(query, args)
        ]

    def __len__(self):
        return self._conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0]

    def close(self):
        """Closes the connection (the file stays)."""
        self._conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()
