"""A bench-only infrastructure driver: it "boots" simulated assemblies in ``bench/scale.py``.

Selected only by ``PCLOUD_BENCH_SIMULATOR`` in the daemons' environment
(:data:`pcloud.infrastructures.SIMULATOR_SWITCH`), never by the bus or a deployable. Each
operation is one JSON line over the simulator's Unix socket (in the bench's private work
dir), answered by one line; a boot hands over the assembly's fresh per-boot login, with which
the simulated agent then logs in to the broker, as a real agent would.
"""

from __future__ import annotations

import json
import os
import socket

from dpe_agent.drivers.base import AssemblySpec, DeathReport, DriverError, PowerState
from pcloud.infrastructures import SIMULATOR_SWITCH

TIMEOUT = 60.0


class SimulatedDriver:
    """Start, stop, fence and status of simulated assemblies, through the simulator."""

    name = "simulated"
    boot_timeout = 30.0

    def __init__(self) -> None:
        path = os.environ.get(SIMULATOR_SWITCH)
        if not path:
            raise DriverError(f"the simulated driver needs {SIMULATOR_SWITCH}")
        self.path = path

    def _ask(self, op: str, spec: AssemblySpec, **extra: object) -> dict:
        request = {"op": op, "deployable": spec.deployable, "name": spec.name, **extra}
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(TIMEOUT)
                sock.connect(self.path)
                sock.sendall(json.dumps(request).encode() + b"\n")
                answer = sock.makefile("rb").readline()
        except OSError as exc:
            raise DriverError(f"simulator: {op} of {spec.name}: {exc}") from None
        try:
            reply = json.loads(answer)
        except ValueError:
            raise DriverError(f"simulator: {op} of {spec.name}: no answer") from None
        if not reply.get("ok"):
            raise DriverError(f"simulator: {op} of {spec.name}: {reply.get('error')}")
        return reply

    def start(self, spec: AssemblySpec) -> None:
        if spec.credentials is None:
            raise DriverError(f"no agent login for {spec.deployable}/{spec.name}")
        self._ask("start", spec, uuid=spec.uuid, interval=spec.heartbeat_interval,
                  user=spec.credentials.user, password=spec.credentials.password)

    def stop(self, spec: AssemblySpec, timeout: float) -> None:
        self._ask("stop", spec)

    def fence(self, spec: AssemblySpec) -> None:
        self._ask("fence", spec)

    def status(self, spec: AssemblySpec) -> PowerState:
        return PowerState(self._ask("status", spec)["state"])

    def watch_deaths(self, report: DeathReport) -> None:
        """Simulated deaths are silent: heartbeats find them, which is what is measured."""
