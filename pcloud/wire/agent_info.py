"""``<agent>``: a guest agent's answer to ``agent_info`` (the request is an empty
``<agent/>``), saying which assembly it serves, as which process and since when: how an
operator or a test tells a restarted agent from the one it knew.
"""

from __future__ import annotations

from dataclasses import dataclass

from lxml import etree

from pcloud.wire import check
from pcloud.wire.check import WireError

TAG = "agent"

_RULES: check.Rules = {"deployable": (True, check.NAME_RULE),
                       "assembly": (True, check.NAME_RULE), "uuid": (False, check.UUID_RULE),
                       "pid": (True, check.UINT_RULE), "started": (True, check.TIME_RULE),
                       "version": (True, check.text)}


@dataclass(frozen=True)
class AgentInfo:
    """Who answers on an agent queue; ``uuid`` the assembly's (None: a test agent)."""

    deployable: str
    assembly: str
    pid: int
    started: str
    version: str
    uuid: str | None = None

    @classmethod
    def from_xml(cls, root: etree._Element) -> AgentInfo:
        """The answer in ``root``, or WireError saying what the schema would refuse (an
        empty ``<agent/>``, which the schema also allows as the request, is no answer)."""
        check.element(root, TAG, _RULES)
        if check.children(root):
            raise WireError("<agent> is empty")
        a = root.attrib
        return cls(a["deployable"], a["assembly"], int(a["pid"]), a["started"], a["version"],
                   a.get("uuid"))

    def to_xml(self) -> etree._Element:
        elem = etree.Element(TAG, deployable=self.deployable, assembly=self.assembly)
        if self.uuid is not None:
            elem.set("uuid", self.uuid)
        elem.set("pid", str(self.pid))
        elem.set("started", self.started)
        elem.set("version", self.version)
        return elem
