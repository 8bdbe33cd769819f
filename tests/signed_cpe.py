"""A cped runner whose client signs its requests (``user_id``), as the CPE now requires.

``support.cpe.running_cped`` with ``pcloud.bus.Bus`` as the client: the bus stamps its
login on every message, so cped takes the calls; cleanup is the harness's (every deployable
stopped, then every process naming the state dir killed).
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path

from lxml import etree
from support.cpe import CpedProcess, running_cped

from pcloud.bus import Bus, BusError, MethodError

CPE_QUEUE = "pcloud.cpe"


class BusClient:
    """The few calls the CPE tests make, through pcloud's own bus."""

    def __init__(self, url: str) -> None:
        self.bus = Bus(url, name="test-signed-client").start(timeout=30)

    def close(self) -> None:
        self.bus.close()

    def request(self, queue: str, method: str, body: str, timeout: float = 15.0
                ) -> etree._Element | None:
        """A call that must be answered (success or error); AssertionError when it is not,
        which is what ``CpedProcess.start`` waits through."""
        try:
            return self.bus.call(queue, method, body, timeout=timeout)
        except MethodError:
            return None
        except BusError as exc:
            raise AssertionError(f"no answer to {method}: {exc}") from None

    def call(self, method: str, body: str, timeout: float = 15.0) -> etree._Element | None:
        return self.bus.call(CPE_QUEUE, method, body, timeout=timeout)

    def status(self, name: str) -> etree._Element:
        return self.call("deployable_status", f'<deployable name="{name}"/>')

    def listing(self) -> dict[str, str]:
        result = self.call("deployables_list", "<deployables/>")
        return {d.get("name"): d.get("state") for d in (result if result is not None else [])}


def signed_cped(state_dir: Path, url: str
                ) -> AbstractContextManager[tuple[CpedProcess, BusClient]]:
    """``running_cped`` with a client on pcloud's own bus."""
    return running_cped(state_dir, url, BusClient)
