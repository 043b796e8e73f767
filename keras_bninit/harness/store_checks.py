"""Checks of a results store's file and of its rows (`harness.store`).

The file: `check_ours` refuses another program's SQLite database, or a
damaged one, reading it without writing, before anything can write to it.

The rows: a row of `runs` is keyed by `(config_key, seed)`, both derived
from the record it holds (`config_key(record["config"])` and the config's
seed, as `ResultStore.put` wrote them; 0.2 stores' keys are the same
function's). `row_problem` derives them again from the row's own record.
A row whose key is not its record's (rewritten by hand or by a tool, or a
record that is no longer JSON) stands for a run it does not hold: a sweep
would skip that run as done, train the row's own run again, and leave two
records of one run, which no report can pair.

Such a row is left out of every read (`checked_rows`, with a warning
naming it) and set aside by the next sweep (`set_aside`), which then runs
its run again. Set aside means moved, in one transaction, into the table
`runs_set_aside` with the time and the reason; neither deleted nor marked
in place:

- deleting would destroy what may be the only copy of a result, and the
  evidence of what happened to the store;
- a mark in place would keep the row under the primary key of the run it
  claims, so the real record of that run could never be stored, and every
  query would have to remember to skip it.

The moved row is out of every query and key lookup, and stays readable
(`SELECT * FROM runs_set_aside`) for whoever wants to know what it held.
"""

import json
import numbers
import os
import sqlite3
import urllib.parse
import warnings

from keras_bninit.harness.config import config_key

# SQLite's application_id of a results store ("kbin"), stamped since 0.3;
# older stores are recognised by their tables.
APPLICATION_ID = 0x6B62696E
_OUR_TABLES = {
    "runs": {"config_key", "seed", "status", "config", "record"},
    "claims": {"config_key", "seed", "owner", "heartbeat"},
}
SET_ASIDE_TABLE = "runs_set_aside"


class StoreError(ValueError):
    """The store file is not a SQLite results store, or it is damaged."""


class StoreRowWarning(RuntimeWarning):
    """A row of a results store does not match its own record."""


def read_only_uri(path):
    """The SQLite URI that opens `path` for reading only."""
    return "file:" + urllib.parse.quote(os.path.abspath(path)) + "?mode=ro"


def damaged(path, error):
    """The `StoreError` of a file SQLite cannot read as a database."""
    return StoreError(
        f"{path!r} is not a results store or is damaged (SQLite: {error}); "
        "move it away to start a new one"
    )


def check_ours(path):
    """Raises `StoreError` unless `path` is missing, empty or one of our
    stores; reads it without writing (a foreign file stays unchanged).

    A database without tables is let through: another process of a sweep
    may be creating the store this instant (SQLite has made the file, the
    tables are not committed yet), and such a file holds nothing to harm."""
    if not os.path.exists(path) or os.path.getsize(path) == 0:
        return
    try:
        conn = sqlite3.connect(read_only_uri(path), uri=True)
        try:
            stamp = conn.execute("PRAGMA application_id").fetchone()[0]
            tables = {
                name: {
                    column[1]
                    for column in conn.execute(f"PRAGMA table_info({name})")
                }
                for (name,) in conn.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'table'"
                )
            }
        finally:
            conn.close()
    except sqlite3.OperationalError:
        return  # locked or unreadable: the machine's problem, met later
    except sqlite3.DatabaseError as error:
        raise damaged(path, error) from None
    if not tables and stamp in (0, APPLICATION_ID):
        return
    ours = all(
        columns <= tables.get(name, set())
        for name, columns in _OUR_TABLES.items()
    )
    if stamp not in (0, APPLICATION_ID) or not ours:
        found = ", ".join(sorted(tables)) or "no tables"
        raise StoreError(
            f"{path!r} is another program's SQLite database (tables: "
            f"{found}), not a keras_bninit results store; give the sweep "
            "another --out"
        )


# -- rows -------------------------------------------------------------------


def row_name(path, key, seed):
    """How messages name one row of a store."""
    return f"{path} row config_key={key} seed={seed}"


def row_problem(key, seed, text):
    """Checks one row of `runs` against the record it holds.

    Args:
        key, seed: the row's `config_key` and `seed` columns.
        text: its `record` column (the record's JSON).

    Returns:
        `(record, problem)`: the decoded record (None when it is not
        JSON) and None when the row checks out, else what is wrong, in
        words that follow the row's name.
    """
    try:
        record = json.loads(text)
    except (TypeError, ValueError) as error:
        return None, f"holds a record that is not valid JSON ({error})"
    config = record.get("config") if isinstance(record, dict) else None
    if not isinstance(config, dict):
        return record, "holds a record without a config"
    try:
        actual = config_key(config)
    except (TypeError, ValueError) as error:
        return record, f"holds a config without a key ({error})"
    if actual != key:
        return record, f"does not match its config, whose key is {actual}"
    own = config.get("seed")
    if (
        isinstance(own, bool)
        or not isinstance(own, numbers.Integral)
        or own != seed
    ):
        return record, f"does not match its config, whose seed is {own!r}"
    return record, None


def checked_rows(path, rows, stacklevel=3):
    """The `(config_key, seed, record)` of the `rows` (`config_key`,
    `seed`, `record`) that match their own record, in order; every other
    row is left out with a `StoreRowWarning` naming it."""
    checked = []
    for row in rows:
        key, seed, text = row[0], row[1], row[2]
        record, problem = row_problem(key, seed, text)
        if problem is None:
            checked.append((key, seed, record))
            continue
        warnings.warn(
            f"{row_name(path, key, seed)} {problem}; left out (the next "
            "sweep on this folder sets it aside and runs it again)",
            StoreRowWarning,
            stacklevel=stacklevel,
        )
    return checked


def _bad_rows(conn):
    found = []
    for key, seed, text in conn.execute(
        "SELECT config_key, seed, record FROM runs ORDER BY config_key, seed"
    ):
        problem = row_problem(key, seed, text)[1]
        if problem is not None:
            found.append((key, seed, problem))
    return found


def set_aside(conn, lock, path):
    """Moves every row of `runs` that does not match its own record into
    `runs_set_aside` (one `BEGIN IMMEDIATE` transaction), with one
    `StoreRowWarning` per row naming it; its run is then missing from the
    store, so a sweep runs it again.

    Args:
        conn, lock: a `ResultStore`'s connection and the lock that
            serializes its use.
        path: the store's file, for the messages.

    Returns:
        The `(config_key, seed, problem)` of the rows moved.
    """
    with lock:
        if not _bad_rows(conn):  # the common case: read only
            return []
        conn.execute("BEGIN IMMEDIATE")
        try:
            found = _bad_rows(conn)  # again, under the write lock
            if found:
                _move(conn, found)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    for key, seed, problem in found:
        warnings.warn(
            f"{row_name(path, key, seed)} {problem}; set aside in table "
            f"{SET_ASIDE_TABLE}, and its run is done again",
            StoreRowWarning,
            stacklevel=3,
        )
    return found


def _move(conn, found):
    columns = ", ".join(
        column[1] for column in conn.execute("PRAGMA table_info(runs)")
    )
    conn.execute(
        f"CREATE TABLE IF NOT EXISTS {SET_ASIDE_TABLE} "
        f"({columns}, set_aside_at TEXT, problem TEXT)"
    )
    for key, seed, problem in found:
        where = "WHERE config_key IS ? AND seed IS ?"
        conn.execute(
            f"INSERT INTO {SET_ASIDE_TABLE} ({columns}, set_aside_at, "
            f"problem) SELECT {columns}, datetime('now'), ? FROM runs {where}",
            (problem, key, seed),
        )
        conn.execute(f"DELETE FROM runs {where}", (key, seed))
