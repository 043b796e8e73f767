"""Atomic file writes: a reader sees the old file or the new one, whole.

The new content goes to a temporary file in the same directory, is flushed
and fsynced, then renamed over the old file; the directory is fsynced so
the rename survives a power cut.
"""

import errno
import json
import os
import shutil
import tempfile
import warnings


def atomic_write_json(path, obj):
    """Writes `obj` as JSON to `path` via a temporary file and a rename."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".json")
    try:
        # mkstemp creates the file 0600; give it the mode `open` would
        # (0666 less the umask), so collaborators can read the results.
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=True, default=_jsonable)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    fsync_dir(directory)


def fsync_dir(directory):
    """Makes a rename in `directory` durable (where the OS allows it)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems cannot fsync a directory
        pass
    finally:
        os.close(fd)


# Room asked for beyond a file's data (HDF5 metadata, zip directories).
_SPACE_MARGIN = 1 << 20


def ensure_space(directory, nbytes):
    """Raises `OSError(ENOSPC)` unless `directory`'s file system has room
    for about `nbytes` more. HDF5 crashes the interpreter (a segfault in
    h5py's finaliser) when a write runs out of space, so weights files are
    never started without room for them."""
    need = int(nbytes * 1.05) + _SPACE_MARGIN
    free = shutil.disk_usage(directory).free
    if free < need:
        raise OSError(
            errno.ENOSPC,
            f"No space left on device: {directory} has {free:,} bytes free, "
            f"about {need:,} are needed",
        )


def refuse_links(path, what="a run's files"):
    """Raises `ValueError` naming the first symbolic link at or under
    `path` (walked without following links): the harness writes, renames
    and deletes only files of its own, never through a link to elsewhere.
    A missing `path` passes."""
    if os.path.islink(path):
        raise ValueError(
            f"{path} is a symbolic link; {what} must be the folder's own "
            "(remove the link)"
        )
    if not os.path.isdir(path):
        return
    for root, dirs, files in os.walk(path, followlinks=False):
        for name in sorted(dirs + files):
            full = os.path.join(root, name)
            if os.path.islink(full):
                raise ValueError(
                    f"{full} is a symbolic link; {what} must be the "
                    "folder's own (remove the link)"
                )


def read_result(path):
    """A run's result.json as a dict; None when it is missing, or (with a
    `RuntimeWarning` naming it) torn or not a record: the run is done
    again."""
    try:
        record = read_json(path)
    except (ValueError, UnicodeDecodeError) as error:
        problem = f"is unreadable ({error})"
    else:
        if record is None or isinstance(record, dict):
            return record
        problem = "holds no result record"
    warnings.warn(
        f"{path} {problem}; the run is done again", RuntimeWarning, stacklevel=2
    )
    return None


def _umask():
    """The process umask, read without changing it where Linux allows.

    Setting it to read it back (the portable way) would briefly give other
    threads (e.g. a sweep's heartbeat) a umask of 0.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def read_json(path, default=None):
    """The JSON in `path`, or `default` when there is no such file."""
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return default


def _jsonable(value):
    if hasattr(value, "item"):  # NumPy scalars
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"Not JSON serializable: {type(value).__name__}")
