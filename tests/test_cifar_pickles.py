"""CIFAR's python pickles: the real formats load, hostile ones run nothing.

The real files were written by Python 2's cPickle (protocol 2) with NumPy 1,
so their arrays are rebuilt by `numpy.core.multiarray._reconstruct` and
their strings are Python 2 `str` (bytes here). `_py2_pickle` writes that
format byte for byte; Python 3's own pickler gives NumPy 2's form
(`numpy._core...`) for every protocol.
"""

import os
import pickle
import struct
import subprocess
import sys

import numpy as np
import pytest

from keras_bninit.harness import cifar_pickles, datasets

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _py2_str(value):
    if len(value) < 256:
        return b"U" + bytes([len(value)]) + value  # SHORT_BINSTRING
    return b"T" + struct.pack("<i", len(value)) + value  # BINSTRING


def _py2_int(value):
    return b"J" + struct.pack("<i", value)  # BININT


def _py2_array(array):
    """An ndarray as Python 2 + NumPy 1 pickled it (protocol 2)."""
    assert array.dtype == np.uint8 and array.flags.c_contiguous
    dtype = (
        b"cnumpy\ndtype\n"
        + _py2_str(b"u1")
        + b"K\x00K\x01\x87R"  # ('u1', 0, 1), REDUCE
        + b"(K\x03"  # the state: (3, '|', None, None, None, -1, -1, 0)
        + _py2_str(b"|")
        + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
    )
    shape = b"(" + b"".join(_py2_int(n) for n in array.shape) + b"t"
    return (
        b"cnumpy.core.multiarray\n_reconstruct\n"
        + b"cnumpy\nndarray\n"
        + b"K\x00\x85"  # (0,)
        + _py2_str(b"b")
        + b"\x87R"  # _reconstruct(ndarray, (0,), 'b')
        + b"(K\x01"  # the state: (1, shape, dtype, False, data)
        + shape
        + dtype
        + b"\x89"
        + _py2_str(array.tobytes())
        + b"tb"
    )


def _py2_value(value):
    if isinstance(value, bytes):
        return _py2_str(value)
    if isinstance(value, np.ndarray):
        return _py2_array(value)
    if isinstance(value, list):
        return b"](" + b"".join(_py2_value(v) for v in value) + b"e"
    return _py2_int(value)


def _py2_pickle(batch):
    """A CIFAR batch dict (bytes keys) as Python 2's cPickle wrote it."""
    body = b"".join(_py2_str(k) + _py2_value(v) for k, v in batch.items())
    return b"\x80\x02}(" + body + b"u."


def _batches(seed, n=20):
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    labels = [int(v) for v in rng.integers(0, 10, n)]
    return {
        b"batch_label": b"training batch",
        b"labels": labels,
        b"data": data,
        b"filenames": [b"img_%d.png" % i for i in range(n)],
    }


def _write_cifar10(root, dump):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    batches = [_batches(seed) for seed in range(6)]
    for i, batch in enumerate(batches[:5], 1):
        (folder / f"data_batch_{i}").write_bytes(dump(batch))
    (folder / "test_batch").write_bytes(dump(batches[5]))
    names = [b"c%d" % i for i in range(10)]
    (folder / "batches.meta").write_bytes(dump({b"label_names": names}))
    return folder, batches


def _expected_images(batches):
    data = np.concatenate([b[b"data"] for b in batches])
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)


@pytest.mark.parametrize(
    "dump",
    [
        pytest.param(_py2_pickle, id="python2-numpy1"),
        *(
            pytest.param(
                lambda b, p=p: pickle.dumps(b, protocol=p), id=f"py3-p{p}"
            )
            for p in (2, 3, 4, 5)
        ),
    ],
)
def test_real_formats_load_to_the_same_arrays(tmp_path, dump):
    folder, batches = _write_cifar10(tmp_path, dump)
    raw = cifar_pickles.load("cifar10", str(folder))
    train, test = _expected_images(batches[:5]), _expected_images(batches[5:])
    np.testing.assert_array_equal(raw.train_images, train)
    np.testing.assert_array_equal(raw.test_images, test)
    expected = np.concatenate([b[b"labels"] for b in batches[:5]])
    np.testing.assert_array_equal(raw.train_labels, expected)
    assert raw.train_labels.dtype == np.int64
    assert raw.class_names == tuple(f"c{i}" for i in range(10))


def test_the_py2_writer_matches_what_pickle_reads():
    """The hand-written Python 2 stream is what the unrestricted reader
    reads too, so the format test above tests the real layout."""
    batch = _batches(7)
    loaded = pickle.loads(_py2_pickle(batch), encoding="bytes")
    assert loaded.keys() == batch.keys()
    np.testing.assert_array_equal(loaded[b"data"], batch[b"data"])
    assert loaded[b"labels"] == batch[b"labels"]
    assert b"numpy.core.multiarray" in _py2_pickle(batch)


class _Hostile:
    """Unpickling it would create the marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _hostile_folder(tmp_path, payload):
    folder, _ = _write_cifar10(tmp_path / "data", _py2_pickle)
    (folder / "data_batch_1").write_bytes(payload)
    return folder


HOSTILE = {
    "reduce-open": lambda marker: pickle.dumps(_Hostile(marker)),
    "os-system": lambda marker: (
        b"cos\nsystem\n(V touch " + marker.encode() + b"\ntR."
    ),
    "builtins-eval": lambda marker: (
        b"c__builtin__\neval\n(V__import__('pathlib').Path("
        + repr(marker).encode()
        + b").touch()\ntR."
    ),
}


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_a_hostile_pickle_runs_nothing_and_names_the_file(tmp_path, kind):
    marker = str(tmp_path / "pwned")
    folder = _hostile_folder(tmp_path, HOSTILE[kind](marker))
    with pytest.raises(datasets.BadDataError) as info:
        cifar_pickles.load("cifar10", str(folder))
    assert not os.path.exists(marker)
    assert str(folder / "data_batch_1") in str(info.value)
    assert "refused" in str(info.value)
    with pytest.raises(ValueError, match="data_batch_1"):
        datasets.ensure_available("cifar10", str(folder.parent))
    assert not os.path.exists(marker)


def test_a_truncated_pickle_is_bad_data_naming_the_file(tmp_path):
    folder, _ = _write_cifar10(tmp_path, _py2_pickle)
    (folder / "test_batch").write_bytes(_py2_pickle(_batches(1))[:500])
    with pytest.raises(datasets.BadDataError, match="test_batch"):
        cifar_pickles.load("cifar10", str(folder))


@pytest.mark.parametrize("command", ["run", "sweep"])
def test_cli_refuses_a_hostile_pickle_with_one_line(tmp_path, command):
    marker = str(tmp_path / "pwned")
    folder = _hostile_folder(tmp_path, HOSTILE["os-system"](marker))
    out = tmp_path / "out"
    args = ["--dataset", "cifar10", "--data-dir", str(folder.parent)]
    if command == "sweep":
        args += ["--gamma", "0.1", "--seeds", "1"]
    result = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "train.py"),
            command,
            *args,
            "--model",
            "resnet8",
            "--epochs",
            "1",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
        cwd=ROOT,
        timeout=600,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "data_batch_1" in lines[0] and "os.system" in lines[0]
    assert not os.path.exists(marker)
    assert not out.exists()
