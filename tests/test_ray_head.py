"""A lost Ray head node ends the sweep's driver cleanly (issue 30): one
line, exit 1, no claims left, and the same command resumes."""

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid

import pytest

from keras_bninit.harness import ray_head
from keras_bninit.harness.store import ResultStore
from keras_bninit.harness.sweep import EnvironmentFailure

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_driver_gives_up_before_ray_does():
    assert ray_head.ray_timeout_s({}) == 60.0  # Ray's default
    env = {ray_head.RAY_TIMEOUT_ENV: "20"}
    assert ray_head.ray_timeout_s(env) == 20.0
    for bad in ("", "soon", "-5", "0"):
        assert ray_head.ray_timeout_s({ray_head.RAY_TIMEOUT_ENV: bad}) == 60
    assert ray_head.give_up_after(60.0) == 50.0  # 10 s before Ray
    assert ray_head.give_up_after(15.0) == 7.5  # at the latest halfway


def test_the_watch_counts_from_the_first_unanswered_probe():
    now = [100.0]
    watch = ray_head.HeadWatch("10.1.2.3:6379", clock=lambda: now[0])
    watch.observe(True)
    assert watch.lost() is None
    watch.observe(False)
    now[0] += 4.0
    watch.observe(False)  # still the first probe's time
    watch.check(5.0)  # 4 s: not yet
    assert watch.lost() == 4.0
    now[0] += 1.5
    with pytest.raises(EnvironmentFailure) as caught:
        watch.check(5.0)
    assert isinstance(caught.value, ray_head.HeadLostError)
    message = str(caught.value)
    assert "the Ray head node (10.1.2.3:6379) has not answered for 6 s" in (
        message
    )
    assert ray_head.RAY_TIMEOUT_ENV in message and "\n" not in message
    watch.observe(True)  # it answers again: the count starts over
    assert watch.lost() is None
    watch.check(0.0)


def test_a_probe_reaches_a_listening_port_and_not_a_closed_one():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        assert ray_head.HeadWatch(f"127.0.0.1:{port}").probe()
    assert not ray_head.HeadWatch(f"127.0.0.1:{port}", every=0.5).probe()


def _ray_start(ray_cli, *args, env, groups):
    """`ray start` in a session of its own: its daemons (GCS, raylet,
    agents that rename themselves) stay in its process group, which
    `groups` collects for the kill."""
    proc = subprocess.Popen(
        [ray_cli, "start", *args, "--disable-usage-stats"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    groups.append(proc.pid)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]


def _kill_groups(groups):
    for _ in range(2):
        for group in groups:
            try:
                os.killpg(group, signal.SIGKILL)
            except OSError:
                pass  # gone
        time.sleep(0.5)


@pytest.fixture
def cluster():
    """A head node with no CPUs and one 1-CPU node, started by `ray start`
    on this machine; yields (address, env, head's GCS pid, stop). `stop()`,
    also called afterwards, kills everything it started and nothing
    else."""
    pytest.importorskip("ray")
    ray_cli = os.path.join(os.path.dirname(sys.executable), "ray")
    if not os.path.exists(ray_cli) or not os.path.isdir("/proc"):
        pytest.skip("needs the `ray` command and /proc")
    token = uuid.uuid4().hex  # the cluster's, for every process in it
    env = dict(
        os.environ,
        TF_CPP_MIN_LOG_LEVEL="3",
        PYTHONUNBUFFERED="1",
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=token,
        # Ray's wait for a lost head: the driver gives up after 10 s.
        **{ray_head.RAY_TIMEOUT_ENV: "20"},
    )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ip = socket.gethostbyname(socket.gethostname())
    # Short: Ray's socket paths under it must fit AF_UNIX's 107 bytes.
    temp_dir = tempfile.mkdtemp(prefix="kb-ray-")
    groups = []
    try:
        _ray_start(
            ray_cli, "--head", f"--port={port}", "--num-cpus=0",
            f"--temp-dir={temp_dir}", "--include-dashboard=false",
            env=env, groups=groups,
        )  # fmt: skip
        gcs = subprocess.run(
            ["pgrep", "-f", f"gcs_server.*--gcs_server_port={port}"],
            capture_output=True,
            text=True,
        ).stdout.split()
        assert len(gcs) == 1, gcs
        address = f"{ip}:{port}"
        _ray_start(
            ray_cli, f"--address={address}", "--num-cpus=1", env=env,
            groups=groups,
        )  # fmt: skip
        yield address, env, int(gcs[0]), lambda: _kill_groups(groups)
    finally:
        _kill_groups(groups)
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.mark.slow
def test_a_lost_head_node_ends_the_driver_in_one_line(cluster, tmp_path):
    address, env, gcs_pid, stop = cluster
    out = str(tmp_path / "sweep")
    argv = [
        sys.executable, os.path.join(ROOT, "train.py"), "sweep",
        "--dataset", "digits", "--model", "resnet8", "--gamma", "0.1",
        "--no-base", "--seeds", "1", "--epochs", "40", "--out", out,
    ]  # fmt: skip
    proc = subprocess.Popen(
        [*argv, "--executor", "ray", "--ray-address", address],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env=env, cwd=ROOT,
    )  # fmt: skip
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if "epoch 1/40" in line:  # the head's GCS dies mid-run
            os.kill(gcs_pid, signal.SIGKILL)
            killed = time.monotonic()
            break
    text = "".join(lines) + proc.communicate(timeout=300)[0]
    waited = time.monotonic() - killed
    assert proc.returncode == 1, text[-3000:]
    assert "Failed to connect to GCS" not in text and "Traceback" not in text
    ours = [x for x in text.splitlines() if x.startswith("train.py: ")]
    port = address.rpartition(":")[2]
    assert len(ours) == 1 and re.match(
        r"train\.py: stopped by the environment: the Ray head node "
        rf"\([\d.]+:{port}\) has not answered for 1\d s \(Ray gives up at "
        r"20 s, RAY_gcs_rpc_server_reconnect_timeout_s\); finished runs are "
        "stored, the running ones unclaimed; rerun the same command",
        ours[0],
    ), text[-3000:]
    assert ours[0].endswith("rerun the same command to resume")
    assert 10 <= waited < 60  # ours, before Ray's own exit at 20 s
    with ResultStore(out) as store:
        assert store.claims() == {} and len(store) == 0
    # Its nodes would end the orphaned task once Ray gives up on the head
    # too (20 s); here the cluster is stopped now, and the same sweep on
    # this machine resumes the run.
    stop()
    rerun = subprocess.run(
        argv, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600
    )
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    with ResultStore(out) as store:
        assert store.claims() == {}
        assert [r["status"] for r in store.records(status=None)] == ["ok"]
