"""The ``deployable_status`` document, built from what the DPE knows of each component.

Components are keyed as everywhere in the DPE: ``()`` the deployable, ``(assembly,)``,
``(assembly, resource)``. Besides its state and fail count, a component that ever failed
carries ``last_failure`` (ISO 8601) so an operator sees when, and ``reason``: why it is in its
state, or for a component running again, what its last failure was. An assembly whose agent
reported IP addresses carries them (``addresses``). Pure: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from lxml import etree

from dpe_agent.incidents import iso
from pcloud.deployable import Deployable
from pcloud.states import AssemblyState as A
from pcloud.states import DeployableState as D
from pcloud.states import ResourceState as R

Key = tuple[str, ...]


@dataclass(frozen=True)
class ComponentRecords:
    """The DPE's per-component tables the status is made of."""

    states: Mapping[Key, str]
    reasons: Mapping[Key, str]
    fail_counts: Mapping[Key, int]
    failures: Mapping[Key, tuple[float, str]]   # last failure: (epoch seconds, reason)
    addresses: Mapping[str, tuple[str, ...]] = field(default_factory=dict)   # by assembly


def summary(name: str, state: str | None) -> etree._Element:
    """``<deployable name state/>``: the result of start, stop and reload."""
    return etree.Element("deployable", name=name, state=state or D.STARTING)


def status_document(dep: Deployable, records: ComponentRecords) -> etree._Element:
    """The full ``<deployable>`` status with its assemblies and resources."""
    root = summary(dep.name, records.states.get(()))
    if dep.uuid:
        root.set("uuid", dep.uuid)
    _describe(root, (), records, running=D.RUNNING)
    for asm in dep.assemblies:
        key = (asm.name,)
        a = etree.SubElement(root, "assembly", name=asm.name,
                             state=records.states.get(key) or A.PENDING,
                             fail_count=str(records.fail_counts.get(key, 0)))
        if asm.uuid:
            a.set("uuid", asm.uuid)
        if asm.name in records.addresses:
            a.set("addresses", " ".join(records.addresses[asm.name]))
        _describe(a, key, records, running=A.RUNNING)
        for svc in asm.services:
            key = (asm.name, svc.name)
            r = etree.SubElement(a, "resource", name=svc.name,
                                 state=records.states.get(key) or R.PENDING,
                                 fail_count=str(records.fail_counts.get(key, 0)))
            r.set("class", svc.klass)
            _describe(r, key, records, running=R.RUNNING)
    return root


def _describe(elem: etree._Element, key: Key, records: ComponentRecords, running: str) -> None:
    """Set ``last_failure`` and ``reason`` on one component's element."""
    failure = records.failures.get(key)
    if failure is not None:
        elem.set("last_failure", iso(failure[0]))
    if elem.get("state") != running:
        reason = records.reasons.get(key)
    else:
        reason = failure[1] if failure is not None else None
    if reason:
        elem.set("reason", reason)


def encode_keyed(table: Mapping[Key, object]) -> dict[str, object]:
    """A component table as JSON-able data for the DPE store (``a/svc`` keys)."""
    return {"/".join(key): value for key, value in table.items()}


def decode_keyed(data: Mapping[str, object]) -> dict[Key, object]:
    """Inverse of :func:`encode_keyed` (the deployable's own key is ``""``)."""
    return {tuple(key.split("/")) if key else (): value for key, value in data.items()}
