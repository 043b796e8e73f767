"""Bad image folders are bad input (issue 28, item 4): every fault is one
`BadDataError` naming the file or class, found before a run claims or
writes anything, exit status 2 on the command line, nothing stored."""

import dataclasses
import os
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
from PIL import Image

from keras_bninit.harness.bounds import BadInputError
from keras_bninit.harness.datasets import BadDataError, ensure_available

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_BNINIT_CACHE", str(tmp_path / "cache"))


def _folder(root, per_class=10):
    rng = np.random.RandomState(0)
    for name in ("cat", "dog"):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.randint(0, 256, size=(9, 7, 3)).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


def _chunk(kind, payload):
    return (
        struct.pack(">I", len(payload))
        + kind
        + payload
        + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)
    )


def _bomb_png(path, side=30000):
    """A valid PNG header of side x side 8-bit grey pixels (900 million
    for 30000): Pillow's guard refuses it from the header alone."""
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    row = b"\0" + bytes(side)
    data = zlib.compress(row * 4)  # the first rows; the guard reads none
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", data)
        + _chunk(b"IEND", b"")
    )


def _spoil(folder, case):
    """Makes `folder` bad in one way; returns what the error must name."""
    target = folder / "dog" / "0.png"
    if case == "zero bytes":
        target.write_bytes(b"")
    elif case == "truncated":
        data = target.read_bytes()
        target.write_bytes(data[: len(data) * 2 // 3])  # header, part of IDAT
    elif case == "not an image":
        target.write_text("these are notes, not pixels\n")
    elif case == "fifo":
        target.unlink()
        os.mkfifo(target)
    elif case == "link":
        target.unlink()
        os.symlink(folder / "cat" / "0.png", target)
    elif case == "bomb":
        _bomb_png(target)
    elif case == "one image":
        for path in sorted((folder / "dog").iterdir())[1:]:
            path.unlink()
        return "class 'dog' has 1 image(s); the stratified test split"
    return str(target)


CASES = {
    "zero bytes": "is not a readable image",
    "truncated": "is not a readable image",
    "not an image": "is not a readable image",
    "fifo": "is a FIFO",
    "link": "is a symbolic link",
    "bomb": "decompression bomb",
    "one image": "needs at least 2 per class",
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_bad_folder_is_one_bad_data_error(tmp_path, case):
    folder = _folder(tmp_path / "data")
    ensure_available(str(folder))  # the good folder passes
    name = _spoil(folder, case)
    with pytest.raises(BadDataError) as caught:
        ensure_available(str(folder))  # a FIFO would block an open for good
    message = str(caught.value)
    assert isinstance(caught.value, BadInputError)
    assert CASES[case] in message and name in message
    assert "\n" not in message


@pytest.mark.parametrize(
    "per_class, message",
    [
        # 2 x 2 images: the test split takes ceil(0.2 * 4) = 1 image, but
        # needs one of each class.
        (2, "the stratified test split takes 1 of 4 images but needs one"),
        # 2 x 3: the test split takes 2, one per class; the validation
        # split takes ceil(0.1 * 4) = 1 of the 4 left.
        (3, "the stratified validation split takes 1 of 4 images"),
        # 2 x 10: 2 of the 16 left, one of each class.
        (10, None),
    ],
)
def test_a_class_needs_images_for_both_splits(tmp_path, per_class, message):
    """The check draws the run's splits on the labels alone: exactly the
    folders the run can split pass, and the others are named."""
    from keras_bninit.harness import image_folders

    folder = _folder(tmp_path / "data", per_class=per_class)
    if message is None:
        ensure_available(str(folder))
        raw = image_folders.load(str(folder), (8, 8))
        from keras_bninit.harness import datasets

        datasets.validation_split(raw.train_labels)  # the run's draw works
        return
    with pytest.raises(BadDataError, match=message):
        ensure_available(str(folder))


def test_train_and_test_folders_draw_the_validation_split_only(tmp_path):
    _folder(tmp_path / "split" / "train", per_class=10)
    _folder(tmp_path / "split" / "test", per_class=1)
    ensure_available("directory", str(tmp_path / "split"))
    (tmp_path / "split" / "train" / "cat" / "0.png").unlink()  # 9 + 10
    for i in range(1, 9):
        (tmp_path / "split" / "train" / "cat" / f"{i}.png").unlink()
    with pytest.raises(BadDataError, match="'cat' has 1 image"):
        ensure_available("directory", str(tmp_path / "split"))


def test_the_check_decodes_once_for_the_run(tmp_path):
    """The check's decode is cached, so the run reads the same arrays."""
    from keras_bninit.harness import image_folders

    folder = _folder(tmp_path / "data")
    ensure_available(str(folder))
    (cache,) = os.listdir(tmp_path / "cache")
    raw = image_folders.load(str(folder), (32, 32))
    assert raw.source.startswith("cache:") and cache in raw.source
    assert raw.train_images.shape == (20, 32, 32, 3)


def test_a_sweep_stores_nothing_for_bad_data(tmp_path):
    """Through the Python API (the command line checks first): the sweep
    raises, no run is stored as failed, no claim is left."""
    from _tiny import tiny_builder

    from keras_bninit.harness.presets import expand
    from keras_bninit.harness.store import ResultStore
    from keras_bninit.harness.sweep import run_sweep

    folder = _folder(tmp_path / "data")
    (folder / "cat" / "3.png").write_bytes(b"")
    runs = expand([{"dataset": str(folder), "gamma": 0.1}], "1-2", epochs=1)
    runs = [dataclasses.replace(r, model="tiny") for r in runs]
    with pytest.raises(BadDataError, match="3.png is not a readable image"):
        run_sweep(
            runs, tmp_path / "sweep", quiet=True, build_model=tiny_builder
        )
    with ResultStore(tmp_path / "sweep") as store:
        assert store.records(status=None) == [] and store.claims() == {}
    assert "runs" not in os.listdir(tmp_path / "sweep")  # no run folder


@pytest.mark.parametrize(
    "case, command",
    [("fifo", "run"), ("bomb", "run"), ("zero bytes", "sweep")],
)
def test_the_command_line_exits_2_with_one_line(tmp_path, case, command):
    folder = _folder(tmp_path / "data")
    name = _spoil(folder, case)
    out = tmp_path / "out"
    args = ["--dataset", str(folder), "--epochs", "1", "--out", str(out)]
    if command == "sweep":
        args += ["--gamma", "0.1", "--seeds", "1"]
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "train.py"), command, *args],
        capture_output=True,
        text=True,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
        timeout=300,  # a FIFO opened for reading would block for good
    )
    assert result.returncode == 2, result.stderr[-2000:]
    (line,) = result.stderr.strip().splitlines()
    assert CASES[case] in line and name in line
    assert not out.exists()
