"""The whole-system harness: cped, its client and one running deployable of ``SERVICES``
(three assemblies of one ``process`` service each), with what a survival test looks at."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lxml import etree

from dpe_agent.drivers.base import AssemblySpec
from dpe_agent.drivers.process import ProcessDriver
from support.cpe import AmqpClient, CpedProcess, _cmdline, _zombie, processes_using, service_pid
from support.waiting import wait_until

SERVICES = {"a1": ["s1"], "a2": ["s2"], "a3": ["s3"]}
SLOW_START = 3   # seconds s1's start waits (start_wait), so a recovery is long enough to hit


@dataclass
class System:
    """cped, its client and one running deployable."""

    broker: object
    cped: CpedProcess
    client: AmqpClient
    name: str

    @property
    def state(self) -> Path:
        return self.cped.state_dir

    def dpe_pid(self) -> int | None:
        try:
            return int((self.state / "dpe" / self.name / "dped.pid").read_text())
        except (OSError, ValueError):
            return None

    def dped_pids(self) -> list[int]:
        """Live dped processes of this deployable (must never be more than one)."""
        marker = f"/dpe/{self.name}/deployable.xml"
        return [p for p in processes_using(str(self.state))
                if not _zombie(p) and "dped" in _cmdline(p) and marker in _cmdline(p)]

    def agent_pid(self, asm: str) -> int | None:
        spec = AssemblySpec(self.name, asm, "-", self.broker.url,
                            self.state / "dpe" / self.name / "assemblies" / asm)
        return ProcessDriver().agent_pid(spec)

    def services(self) -> dict[str, int | None]:
        """Each service's pid; None when it is not running exactly once."""
        return {svc: service_pid(self.state, self.name, asm, svc)
                for asm, svcs in SERVICES.items() for svc in svcs}

    def agents(self) -> dict[str, int | None]:
        return {asm: self.agent_pid(asm) for asm in SERVICES}

    def agent_copies(self, asm: str) -> int:
        """Live guest agents of one assembly (an ``unshare`` wrapper is not one)."""
        needle = f"--deployable {self.name} --assembly {asm} "
        return sum(1 for p in processes_using(str(self.state))
                   if not _zombie(p) and needle in (line := _cmdline(p))
                   and "pcloud-agent" in line and not line.startswith("unshare"))

    def reconnect(self) -> None:
        """A new client connection (the old one died with the broker); same object, so the
        harness's clean-up uses the new one."""
        self.client.close()
        wait_until(self._connect, 60, "a client connection to the restarted broker", step=0.5)

    def _connect(self) -> bool:
        try:
            self.client.__init__(self.broker.url)
        except Exception:
            return False
        return True

    def answering(self) -> bool:
        """The CPE answers and the DPE answers it (no fallback to the last known state)."""
        try:
            status = self.client.status(self.name)
        except AssertionError:
            return False
        return status.get("state") == "running" and status.get("reason") is None

    def wait_running(self, timeout: float = 90) -> None:
        wait_until(self.answering, timeout, f"{self.name} running, its DPE answering")

    def events(self, since: int = 0) -> list[etree._Element]:
        return self.client.events(self.name, since)

    def last_seq(self) -> int:
        return max((int(e.get("seq")) for e in self.events()), default=0)


def leftovers(system: System) -> list[str]:
    """Processes of the test's state dir other than cped, described."""
    cped = system.cped.proc.pid if system.cped.proc else None
    return [_cmdline(p) for p in processes_using(str(system.state))
            if p != cped and not _zombie(p)]
