"""Resource classes behind one interface; :func:`make_resource` picks one by ``class``."""

from __future__ import annotations

from guest_agent.reaper import Reaper
from guest_agent.resources.base import Resource, ResourceError, ResourceSpec
from guest_agent.resources.lsb import LSBResource
from guest_agent.resources.ocf import OCFResource
from guest_agent.resources.process import ProcessResource
from guest_agent.resources.systemd import SystemdResource

CLASSES: dict[str, type[Resource]] = {
    "ocf": OCFResource,
    "lsb": LSBResource,
    "systemd": SystemdResource,
    "process": ProcessResource,
}


def make_resource(spec: ResourceSpec, reaper: Reaper, state_dir: str) -> Resource:
    """Build the resource of spec's class; ResourceError for an unknown class or bad input."""
    cls = CLASSES.get(spec.cls)
    if cls is None:
        raise ResourceError("unknown_class",
                            f"resource class {spec.cls!r} is not one of {', '.join(CLASSES)}")
    return cls(spec, reaper, state_dir)
