"""JEOS and assembly images in the catalogue: built with debootstrap, edited with libguestfs.

The shell, the VM drivers' tests and the demo import everything from here; the code lives by
concern in :mod:`pcloudsh.image_catalogue` (layout, metadata, staging of builds, listing and
deletion), :mod:`pcloudsh.jeos` (building JEOS images) and :mod:`pcloudsh.assembly_images`
(assembly overlays and their identity), :mod:`pcloudsh.image_packages` (Debian packages added to
an image afterwards).
"""

from __future__ import annotations

from pcloudsh.assembly_images import (
    UNASSIGNED,
    assembly_clone,
    assembly_create,
    assembly_install,
    guest_broker_url,
    redact_url,
)
from pcloudsh.image_catalogue import (
    JEOS_META,
    NAME_RE,
    Image,
    ImageError,
    ImageExistsError,
    ImageNotFoundError,
    Progress,
    assembly_delete,
    assembly_get,
    assembly_list,
    jeos_delete,
    jeos_get,
    jeos_list,
)
from pcloudsh.jeos import (
    ARCHES,
    DEBIAN_12,
    DISTRO_ALIASES,
    DISTROS,
    GUEST_DNS,
    RECIPE_VERSION,
    ROOT_LABEL,
    Distro,
    apt_mirror,
    jeos_create,
    jeos_ensure,
    jeos_name,
    jeos_recipe,
)

__all__ = [
    "ARCHES", "DEBIAN_12", "DISTROS", "DISTRO_ALIASES", "GUEST_DNS", "JEOS_META", "NAME_RE",
    "RECIPE_VERSION", "ROOT_LABEL", "UNASSIGNED", "Distro", "Image", "ImageError",
    "ImageExistsError", "ImageNotFoundError", "Progress", "apt_mirror", "assembly_clone",
    "assembly_create", "assembly_delete", "assembly_get", "assembly_install", "assembly_list",
    "guest_broker_url",
    "jeos_create", "jeos_delete", "jeos_ensure", "jeos_get", "jeos_list", "jeos_name",
    "jeos_recipe", "redact_url",
]
