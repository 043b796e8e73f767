"""What a report reads, checked before anything is written (`harness.report`).

A report only reads: `read_store` checks `results.sqlite` read-only, so an
empty (0 bytes), damaged or foreign file is refused with a `StoreError`
naming it and stays byte for byte as it was, then reads it through a
connection that cannot change it (`PRAGMA query_only`). Every problem names
the file or the row behind it:

- a row that does not match its own record (a rewritten key, a record that
  is no longer JSON) is left out with a warning (`store_checks`);
- an ok run whose value is not a finite number (NaN, a string, missing)
  is dropped with a warning naming the row, and counts as failed, as
  `stats` counts it;
- an accuracy outside [0, 1] is an error naming the row and the value.
"""

import json
import math
import numbers
import os
import sqlite3
import warnings

from keras_bninit.harness.config import config_key, field_names
from keras_bninit.harness.store_checks import (
    StoreError,
    check_ours,
    checked_rows,
    damaged,
    read_only_uri,
    row_name,
)

_ROWS = "SELECT config_key, seed, record FROM runs ORDER BY config_key, seed"


def read_store(path):
    """The records of the results store `path`, read without writing.

    Args:
        path: the store's file (a sweep's `results.sqlite`).

    Returns:
        A list of `(name, record)`, ordered by (config_key, seed): each row
        that matches its own record, with the row's name for messages.
        Other rows are left out with a `StoreRowWarning` naming them.

    Raises:
        StoreError: `path` is empty, damaged or another program's
            database (the message names it).
        sqlite3.OperationalError: it cannot be read now (locked, an I/O
            error); the message names it.
    """
    path = os.fspath(path)
    if os.path.isfile(path) and os.path.getsize(path) == 0:
        raise StoreError(
            f"{path!r} is an empty file (0 bytes), not a results store; "
            "a sweep on its folder makes it one, or move it away"
        )
    check_ours(path)  # read only: another program's file, or damaged
    try:
        rows = _read_rows(path)
    except sqlite3.OperationalError as error:
        raise sqlite3.OperationalError(f"{path!r}: {error}") from None
    except sqlite3.DatabaseError as error:
        raise damaged(path, error) from None
    return [
        (row_name(path, key, seed), record)
        for key, seed, record in checked_rows(path, rows, stacklevel=3)
    ]


def _read_rows(path):
    # A connection that may not change the data (`query_only`); as the last
    # one to close, it clears SQLite's -wal and -shm files, as a sweep
    # does. Where the file cannot be opened for writing, read-only.
    try:
        conn = sqlite3.connect(path, timeout=60.0)
        conn.execute("PRAGMA query_only = ON")
    except sqlite3.OperationalError:
        conn = sqlite3.connect(read_only_uri(path), uri=True, timeout=60.0)
    try:
        check = conn.execute("PRAGMA quick_check").fetchone()[0]
        if check != "ok":
            raise sqlite3.DatabaseError(check)
        tables = conn.execute(
            "SELECT name FROM sqlite_master WHERE name = 'runs'"
        ).fetchall()
        return conn.execute(_ROWS).fetchall() if tables else []
    finally:
        conn.close()


def sweep_row_key(sweep_dir, default="gamma"):
    """The report's row field that a sweep remembered in `sweep.json`.

    Raises:
        ValueError: `sweep.json` is not a JSON object or names no
            configuration field (the message names the file).
    """
    path = os.path.join(sweep_dir, "sweep.json")
    try:
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
    except FileNotFoundError:
        return default
    except (OSError, ValueError) as error:
        raise ValueError(
            f"{path!r} cannot be read ({error}); pass --row-key, or run "
            "the sweep again to rewrite it"
        ) from None
    row_key = meta.get("row_key", default) if isinstance(meta, dict) else None
    if row_key not in field_names():
        raise ValueError(
            f"{path!r} holds no report row field (row_key={row_key!r}); "
            f"pass --row-key with one of {', '.join(field_names())}"
        )
    return row_key


def load(records, metric="test_accuracy"):
    """The records of `records`, checked, ready for `stats`.

    Args:
        records: result records (a list of dicts), a `ResultStore`, or the
            path of a store's file (read without writing, `read_store`).
        metric: the record field tabulated.

    Returns:
        A list of records. An ok record whose `metric` is not a finite
        number comes back as failed, with a warning naming it.

    Raises:
        StoreError: a store that cannot be read (see `read_store`).
        ValueError: an accuracy outside [0, 1] (`metric` ends with
            "accuracy"), naming the row or record and the value.
    """
    if isinstance(records, (str, os.PathLike)):
        named = read_store(records)
    elif hasattr(records, "records") and hasattr(records, "path"):
        named = read_store(records.path)  # a ResultStore
    else:
        if hasattr(records, "records"):
            records = records.records(status=None)
        named = [(_ListName(i, r), r) for i, r in enumerate(records)]
    return checked_values(named, metric)


class _ListName:
    """Names the `index`-th record of a list, when a message needs it."""

    def __init__(self, index, record):
        self.index, self.record = index, record

    def __str__(self):
        config = self.record.get("config") or {}
        try:
            key = config_key(config)
        except (TypeError, ValueError):
            key = "?"
        seed = config.get("seed")
        return f"record {self.index} (config_key={key}, seed={seed!r})"


def _finite_number(value):
    return (
        isinstance(value, numbers.Real)
        and not isinstance(value, bool)
        and math.isfinite(value)
    )


def checked_values(named, metric="test_accuracy"):
    """The records of `named` (`(name, record)` pairs), values checked.

    An ok record whose `metric` is not a finite number (NaN, infinity, a
    string, missing) is dropped from the statistics with one warning
    naming it: it comes back as failed, as `stats` would count it anyway.
    An accuracy (a `metric` ending with "accuracy") outside [0, 1] is a
    `ValueError` naming the record and the valid range.
    """
    checked = []
    for name, record in named:
        value = record.get(metric)
        if record.get("status", "ok") != "ok":
            checked.append(record)
        elif not _finite_number(value):
            warnings.warn(
                f"{name}: {metric}={value!r} is not a finite number; "
                "left out of the means and tests, counted as failed",
                RuntimeWarning,
                stacklevel=3,
            )
            reason = f"{metric}={value!r} is not a finite number"
            checked.append({**record, "status": "failed", "reason": reason})
        elif metric.endswith("accuracy") and not 0.0 <= value <= 1.0:
            raise ValueError(
                f"{name}: {metric}={value!r} is not an accuracy; valid: "
                f"0 <= {metric} <= 1"
            )
        else:
            checked.append(record)
    return checked
