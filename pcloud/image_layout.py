"""How an assembly image and a VM's view of the host are laid out: shared by the image
builder (pcloudsh) and the VM drivers (dpe_agent.drivers.vmboot), owned by neither."""

from __future__ import annotations

#: The address at which a guest reaches the host's broker (QEMU user networking guestfwd).
GUEST_BROKER_ADDR = "10.0.2.100"
#: The fw_cfg entry that carries a boot's broker login into the guest (never on the disk).
FW_CFG_NAME = "opt/pcloud/credentials"
#: An assembly image's metadata file and disk, inside its catalogue directory.
ASSEMBLY_META = "assembly.json"
DISK_NAME = "disk.qcow2"
