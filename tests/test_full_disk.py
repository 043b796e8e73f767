"""A full disk ends a run or sweep with one line and exit 1 (issue 28,
item 3), on a real tmpfs: no segfault, no h5py noise, nothing stored as
failed, no claim that blocks the rerun, and the rerun finishes.

The tmpfs is mounted in a mount namespace of the test's own
(`unshare -rm`, no root needed where user namespaces are allowed); the
tests are skipped, saying so, where no tmpfs can be mounted.
"""

import functools
import json
import os
import shlex
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = [sys.executable, os.path.join(ROOT, "train.py")]
ARGS = ["--dataset", "digits", "--model", "resnet8", "--epochs", "2"]

# Every checkpoint written on the background thread, and the disk filled
# by "another writer" while epoch 2's is written there.
FILL_DURING_A_BACKGROUND_WRITE = """
import os, sys, threading
sys.path.insert(0, {root!r})
from keras_bninit.harness import checkpoints, weights_layout

checkpoints.RunState.__init__.__defaults__ = (0,)
write, calls = weights_layout._Layout.write, []

def fill(disk):
    fd = os.open(os.path.join(disk, "filler"), os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, bytes(1 << 16))
    except OSError:
        pass
    finally:
        os.close(fd)

def filled_write(self, path, values):
    if not path.endswith(".check"):  # not the template's own check
        calls.append(path)
        if len(calls) == 3:  # epoch 1 wrote 2 files
            assert threading.current_thread().name.startswith("RunState")
            fill({disk!r})
    return write(self, path, values)

weights_layout._Layout.write = filled_write
import train
sys.argv = ["train.py", *sys.argv[1:]]
sys.exit(train.main())
"""


@functools.cache
def _mount_error():
    """Why no tmpfs can be mounted here, or None."""
    if shutil.which("unshare") is None:
        return "`unshare` (util-linux) is not installed"
    probe = subprocess.run(
        ["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /mnt"],
        capture_output=True,
        text=True,
    )
    if probe.returncode:
        return f"`unshare -rm mount -t tmpfs` failed: {probe.stderr.strip()}"
    return None


def _on_tmpfs(tmp_path, size, steps):
    """Runs `steps` [(name, argv, size after it or None)] in one mount
    namespace, on a tmpfs of `size` mounted at tmp_path/disk; returns
    {name: (returncode, stdout, stderr)}. The disk's files are copied to
    tmp_path/after-<name> after each step (the tmpfs goes with the
    namespace)."""
    reason = _mount_error()
    if reason:
        pytest.skip(f"no tmpfs can be mounted on this machine: {reason}")
    disk = tmp_path / "disk"
    disk.mkdir()
    script = [f"mount -t tmpfs -o size={size} tmpfs {disk} || exit 99"]
    for name, argv, resize in steps:
        quoted = shlex.join(argv)
        script += [
            f"{quoted} >{tmp_path}/{name}.out 2>{tmp_path}/{name}.err",
            f"echo $? >{tmp_path}/{name}.rc",
            f"cp -a {disk} {tmp_path}/after-{name}",
        ]
        if resize:
            script.append(f"mount -o remount,size={resize} {disk}")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1")
    done = subprocess.run(
        ["unshare", "-rm", "bash", "-c", "\n".join(script)],
        env=env,
        cwd=ROOT,
        timeout=900,
    )
    assert done.returncode != 99, "the tmpfs did not mount"
    return {
        name: (
            int((tmp_path / f"{name}.rc").read_text()),
            (tmp_path / f"{name}.out").read_text(),
            (tmp_path / f"{name}.err").read_text(),
        )
        for name, _, _ in steps
    }


def _stopped_by_a_full_disk(result):
    rc, _, err = result
    assert rc == 1, err[-3000:]
    for noise in ("Segmentation", "Exception ignored", "Traceback", "h5py"):
        assert noise not in err, err[-3000:]
    (line,) = [x for x in err.splitlines() if "train.py: stopped" in x]
    assert "No space left on device" in line and "rerun" in line
    assert not [x for x in err.splitlines() if x.startswith(" ")]


def test_a_run_stops_at_the_first_checkpoint_then_resumes(tmp_path):
    """600 KB holds the run's config but not its first checkpoint: the
    layout probe (`model.save_weights`) is refused before HDF5 writes."""
    out = str(tmp_path / "disk" / "runs")
    run = [*TRAIN, "run", *ARGS, "--out", out]
    results = _on_tmpfs(
        tmp_path, "600k", [("full", run, "40m"), ("rerun", run, None)]
    )
    _stopped_by_a_full_disk(results["full"])
    (run_dir,) = (tmp_path / "after-full" / "runs").iterdir()
    assert not (run_dir / "result.json").exists()
    assert os.listdir(run_dir / "backup") == []  # no half-written file
    rc, out_text, err = results["rerun"]
    assert rc == 0, err[-3000:]
    (run_dir,) = (tmp_path / "after-rerun" / "runs").iterdir()
    result = json.loads((run_dir / "result.json").read_text())
    assert result["status"] == "ok" and len(result["history"]["loss"]) == 2


def test_a_disk_filled_during_a_background_write_stops_the_sweep(tmp_path):
    """Another writer fills the disk while epoch 2's checkpoint is written
    on the background thread: one line and exit 1, nothing stored, no
    claim left; once there is room, the rerun trains every run once."""
    from keras_bninit.harness.store import ResultStore

    sweep = [*ARGS, "--gamma", "0.1", "--seeds", "1"]
    out = str(tmp_path / "disk" / "sweep")
    script = tmp_path / "fill_during_a_background_write.py"
    script.write_text(
        FILL_DURING_A_BACKGROUND_WRITE.format(
            root=ROOT, disk=str(tmp_path / "disk")
        )
    )
    filled = [
        sys.executable,
        str(script),
        "sweep",
        *sweep,
        "--out",
        out,
    ]
    free = ["rm", "-f", str(tmp_path / "disk" / "filler")]
    rerun = [*TRAIN, "sweep", *sweep, "--out", out]
    results = _on_tmpfs(
        tmp_path,
        "40m",
        [("full", filled, None), ("free", free, None), ("rerun", rerun, None)],
    )
    _stopped_by_a_full_disk(results["full"])
    with ResultStore(str(tmp_path / "after-full" / "sweep")) as store:
        assert store.records(status=None) == []
        claims = store.claims()
    # The claim is released, or was left by a process that has ended
    # (taken over at once, as the rerun shows).
    assert len(claims) <= 1
    rc, out_text, err = results["rerun"]
    assert rc == 0, err[-3000:]
    with ResultStore(str(tmp_path / "after-rerun" / "sweep")) as store:
        records = store.records(status=None)
        assert store.claims() == {}
        assert len(set(store.runs("ok"))) == 2  # c = 0.1 and BASE, once
    assert sorted(r["status"] for r in records) == ["ok", "ok"]
