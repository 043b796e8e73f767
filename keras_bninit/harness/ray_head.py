"""A lost Ray head node ends a sweep's driver cleanly.

When the head node's GCS (Ray's global control store) stops answering,
Ray's driver core keeps trying for `gcs_rpc_server_reconnect_timeout_s`
(60 s unless `RAY_gcs_rpc_server_reconnect_timeout_s` says otherwise) and
then ends the process from C++ ("Failed to connect to GCS within 60
seconds ... The program will terminate"): exit 1, no word of ours, the
claims of the runs in flight left behind.

`HeadWatch` probes the GCS's port once a second from a thread. Runs that
finish meanwhile are still stored; when the head has not answered for
`give_up_after(...)` seconds (shortly before Ray gives up), the driver
raises `HeadLostError`, an environment failure: its claims are released,
and the command line prints one line and exits 1; the same command
resumes once the cluster is back.
"""

import os
import socket
import threading
import time

from keras_bninit.harness.sweep import EnvironmentFailure

# Ray's own bound on the wait for a lost GCS, and the variable that sets it.
RAY_TIMEOUT_ENV = "RAY_gcs_rpc_server_reconnect_timeout_s"
RAY_TIMEOUT_DEFAULT_S = 60.0


class HeadLostError(EnvironmentFailure):
    """The Ray head node stopped answering: the sweep stops, unclaimed."""


def ray_timeout_s(environ=None):
    """Ray's bound on the wait for a lost GCS, in seconds."""
    value = (os.environ if environ is None else environ).get(RAY_TIMEOUT_ENV)
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return RAY_TIMEOUT_DEFAULT_S
    return seconds if seconds > 0 else RAY_TIMEOUT_DEFAULT_S


def give_up_after(ray_timeout):
    """Ends the driver before Ray's C++ exit: 10 s before it, at the
    latest halfway."""
    return max(ray_timeout - 10.0, ray_timeout / 2.0)


def _host_port(address):
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


class HeadWatch(threading.Thread):
    """Probes `gcs_address` ("host:port") every `every` seconds.

    `lost()` is None while the head answers, else how long it has not.
    """

    def __init__(self, gcs_address, every=1.0, clock=time.monotonic):
        super().__init__(name="ray-head-watch", daemon=True)
        self.address = gcs_address
        self.every = every
        self._clock = clock
        self._down_since = None
        self._stop = threading.Event()

    def probe(self):
        """One probe: whether the GCS accepts a connection."""
        try:
            with socket.create_connection(
                _host_port(self.address), timeout=self.every
            ):
                return True
        except (OSError, ValueError):
            return False

    def observe(self, answered):
        """Records one probe's outcome."""
        if answered:
            self._down_since = None
        elif self._down_since is None:
            self._down_since = self._clock()

    def lost(self):
        down = self._down_since
        return None if down is None else self._clock() - down

    def check(self, limit):
        """Raises `HeadLostError` once the head has not answered for
        `limit` seconds."""
        lost = self.lost()
        if lost is not None and lost >= limit:
            raise HeadLostError(
                f"the Ray head node ({self.address}) has not answered for "
                f"{lost:.0f} s (Ray gives up at {ray_timeout_s():g} s, "
                f"{RAY_TIMEOUT_ENV}); finished runs are stored, the running "
                "ones unclaimed"
            )

    def run(self):
        while not self._stop.wait(self.every):
            self.observe(self.probe())

    def stop(self):
        self._stop.set()
