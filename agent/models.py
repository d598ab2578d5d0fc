"""The agent's domain objects: a VM's spec and status as plain frozen dataclasses.

Nothing here knows about protobuf or libvirt. Field names follow KubeVirt's VM spec;
``agent.spec`` parses and validates them from KubeVirt-shaped dicts and renders them back.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from agent.claimsources import DataVolume, PersistentVolumeClaim
from agent.configsources import (
    CloudInitConfigDrive,
    ConfigKind,
    ConfigVolume,
    Propagation,
    SSHKeyCredential,
)
from agent.datavolume import DataVolumeTemplate
from agent.defaults import GRACE_PERIOD_SECONDS
from agent.hardware import Hardware
from agent.imageref import ImageRef
from agent.probe import Probe

__all__ = [
    "CPU",
    "DISK_FORMATS",
    "MAX_GRACE_PERIOD_SECONDS",
    "Bookkeeping",
    "DiskBacking",
    "NicAllocation",
    "NicBacking",
    "VMAllocation",
    "CloudInitConfigDrive",
    "CloudInitNoCloud",
    "ConfigKind",
    "ConfigVolume",
    "Propagation",
    "SSHKeyCredential",
    "Condition",
    "ContainerDisk",
    "DataVolume",
    "Disk",
    "EmptyDisk",
    "Firmware",
    "HostDisk",
    "ImageFile",
    "Interface",
    "InterfaceStatus",
    "KernelBoot",
    "Network",
    "PersistentVolumeClaim",
    "Phase",
    "Port",
    "RunStrategy",
    "VMSpec",
    "VMStatus",
    "Volume",
    "VolumeSource",
]


# The image formats the agent hands to QEMU (anything else is refused or converted first).
DISK_FORMATS = ("qcow2", "raw")

# The longest a graceful stop may wait for the guest (spec and Stop/Delete requests). A stop
# holds its VM and a call slot while it waits, so it is bounded; a forced stop preempts it.
MAX_GRACE_PERIOD_SECONDS = 3600


class RunStrategy(enum.StrEnum):
    """What the agent does to keep a VM running (KubeVirt's runStrategy)."""

    ALWAYS = "Always"
    HALTED = "Halted"
    MANUAL = "Manual"
    RERUN_ON_FAILURE = "RerunOnFailure"
    # Started when created, never restarted once it stops (KubeVirt's VirtualMachineInstance).
    ONCE = "Once"


class Phase(enum.StrEnum):
    """A VM's lifecycle phase as reported to clients."""

    PENDING = "Pending"
    STOPPED = "Stopped"
    RUNNING = "Running"
    PAUSED = "Paused"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    MIGRATING = "Migrating"
    UNKNOWN = "Unknown"


@dataclass(frozen=True, slots=True)
class CPU:
    """CPU topology; the VM gets sockets x cores x threads vCPUs."""

    cores: int = 1
    sockets: int = 1
    threads: int = 1
    model: str = ""

    @property
    def vcpus(self) -> int:
        return self.cores * self.sockets * self.threads


@dataclass(frozen=True, slots=True)
class KernelBoot:
    """Direct kernel boot from files under an image root (paths relative to the root)."""

    kernel_path: str
    initrd_path: str = ""
    kernel_args: str = ""


@dataclass(frozen=True, slots=True)
class Firmware:
    """Firmware: BIOS (default), UEFI, or direct kernel boot."""

    bootloader: str = "bios"  # "bios" or "efi"
    kernel_boot: KernelBoot | None = None
    secure_boot: bool = False
    # NVRAM kept across restarts: libvirt keeps it per VM (removed with the VM) either way.
    efi_persistent: bool = False
    serial: str = ""  # SMBIOS system serial (firmware.uuid is the VM's uid)


@dataclass(frozen=True, slots=True)
class Disk:
    """A disk device in the guest, backed by the volume of the same name."""

    name: str
    device: str = "disk"  # "disk" or "cdrom"
    bus: str = "virtio"
    readonly: bool = False
    boot_order: int | None = None
    serial: str = ""
    cache: str = ""
    shareable: bool = False
    dedicated_io_thread: bool = False


@dataclass(frozen=True, slots=True)
class ImageFile:
    """An image file (qcow2 or raw) under an image root, booted through a qcow2 overlay."""

    path: str


@dataclass(frozen=True, slots=True)
class ContainerDisk:
    """A disk image pulled from an OCI registry (KubeVirt containerDisk)."""

    image: ImageRef  # parsed (and so checked) once, when the spec is read
    path: str = ""
    image_pull_policy: str = ""


@dataclass(frozen=True, slots=True)
class CloudInitNoCloud:
    """A NoCloud seed (a ``cidata`` ISO) made from user data and network data."""

    user_data: str = ""
    network_data: str = ""
    user_data_secret: str = ""
    network_data_secret: str = ""


@dataclass(frozen=True, slots=True)
class EmptyDisk:
    """A blank qcow2 disk of the given size, removed with the VM."""

    capacity_bytes: int


@dataclass(frozen=True, slots=True)
class HostDisk:
    """A disk image file on the node, used in place (KubeVirt hostDisk)."""

    path: str
    type: str = "Disk"  # "Disk" or "DiskOrCreate"
    capacity_bytes: int = 0


VolumeSource = (
    ImageFile
    | ContainerDisk
    | CloudInitNoCloud
    | CloudInitConfigDrive
    | EmptyDisk
    | HostDisk
    | ConfigVolume
    | PersistentVolumeClaim
    | DataVolume
)


@dataclass(frozen=True, slots=True)
class Volume:
    """A named source of data for a disk."""

    name: str
    source: VolumeSource


@dataclass(frozen=True, slots=True)
class Port:
    """A guest port published on the node (masquerade binding)."""

    port: int
    protocol: str = "TCP"
    name: str = ""
    node_port: int = 0  # 0: allocated by the agent


@dataclass(frozen=True, slots=True)
class Interface:
    """A guest NIC and how it is bound to its network."""

    name: str
    binding: str = "masquerade"  # "masquerade" or "bridge"
    ports: tuple[Port, ...] = ()
    mac_address: str = ""
    model: str = "virtio"


@dataclass(frozen=True, slots=True)
class Network:
    """A network a NIC joins: the node's default VM network or a named host bridge."""

    name: str
    kind: str = "pod"  # "pod" or "multus"
    network_name: str = ""


@dataclass(frozen=True, slots=True)
class VMSpec:
    """Everything a client declares about one VM."""

    namespace: str
    name: str
    uid: str
    labels: dict[str, str] = field(default_factory=dict)
    run_strategy: RunStrategy = RunStrategy.ALWAYS
    cpu: CPU = field(default_factory=CPU)
    memory_bytes: int = 128 * 1024 * 1024
    # resources.requests/limits as written (memory and cpu quantities): they size the guest
    # when memory.guest or the CPU topology is not given, and are kept for the scheduler.
    resource_requests: dict[str, str] = field(default_factory=dict)
    resource_limits: dict[str, str] = field(default_factory=dict)
    machine_type: str = ""
    firmware: Firmware = field(default_factory=Firmware)
    disks: tuple[Disk, ...] = ()
    volumes: tuple[Volume, ...] = ()
    interfaces: tuple[Interface, ...] = ()
    networks: tuple[Network, ...] = ()
    termination_grace_period_seconds: int = GRACE_PERIOD_SECONDS
    hostname: str = ""
    hardware: Hardware = field(default_factory=Hardware)
    ignition_data: str = ""  # handed to the guest over fw_cfg (opt/com.coreos/config)
    readiness_probe: Probe | None = None
    liveness_probe: Probe | None = None
    access_credentials: tuple[SSHKeyCredential, ...] = ()
    data_volume_templates: tuple[DataVolumeTemplate, ...] = ()  # claims imported before start

    @property
    def key(self) -> str:
        """``namespace/name``: how people name a VM."""
        return f"{self.namespace}/{self.name}"

    def volume(self, name: str) -> Volume | None:
        return next((v for v in self.volumes if v.name == name), None)


@dataclass(frozen=True, slots=True)
class Condition:
    """A KubeVirt-style condition: a named boolean with a reason."""

    type: str
    status: bool
    reason: str = ""
    message: str = ""
    last_transition_time: float = 0.0


@dataclass(frozen=True, slots=True)
class InterfaceStatus:
    """What the agent knows about one NIC of a running VM."""

    name: str
    mac: str = ""
    ip_addresses: tuple[str, ...] = ()
    tap_name: str = ""
    published_ports: tuple[Port, ...] = ()


@dataclass(frozen=True, slots=True)
class VMStatus:
    """The observed state of a VM."""

    phase: Phase
    reason: str = ""
    message: str = ""
    conditions: tuple[Condition, ...] = ()
    interfaces: tuple[InterfaceStatus, ...] = ()
    node_name: str = ""
    qemu_pid: int = 0
    guest: bool = False  # a QEMU process exists (the domain is not shut off); not shown
    created_at: float = 0.0
    started_at: float = 0.0
    stopped_at: float = 0.0
    generation: int = 0
    running_generation: int = 0


@dataclass(frozen=True, slots=True)
class NicAllocation:
    """What one NIC holds on the node: its tap and MAC; a guest IP and published ports
    (masquerade binding) or a host bridge (bridge binding)."""

    name: str
    binding: str
    tap: str
    mac: str
    ip: str = ""
    bridge: str = ""
    ports: tuple[Port, ...] = ()


@dataclass(frozen=True, slots=True)
class VMAllocation:
    """Everything one VM holds on the node's network; ``group``: its namespace's isolation."""

    namespace: str
    group: int
    nics: tuple[NicAllocation, ...] = ()

    def nic(self, name: str) -> NicAllocation | None:
        return next((n for n in self.nics if n.name == name), None)


@dataclass(frozen=True, slots=True)
class Bookkeeping:
    """What the agent remembers about a VM besides its spec; times are Unix seconds. Stored
    with the spec in the domain's metadata (``agent.domain.metadata`` is the codec), so a
    restarted agent reads it back from libvirt."""

    generation: int
    created_at: float
    started_at: float = 0.0
    stopped_at: float = 0.0
    last_reason: str = ""
    node_name: str = ""
    # Stopped on purpose (Stop verb, Halted): the run strategy must not start it again.
    halted: bool = False
    # A start under way, and its guest resumed (it may have run): see agent/domain/recovery.
    starting: bool = False
    resumed: bool = False
    # What the VM holds on the node's network; None for a VM without NICs.
    network: VMAllocation | None = None


@dataclass(frozen=True, slots=True)
class DiskBacking:
    """The host file or block device behind the spec disk of the same name (ISOs are raw)."""

    name: str
    path: str
    format: str = "qcow2"
    block: bool = False  # a block device node: always raw
    readonly: bool = False  # read-only whatever the disk says (config volumes, claims)

    def __post_init__(self) -> None:
        if not self.path.startswith("/"):
            raise ValueError(f"disk {self.name!r}: backing path {self.path!r} is not absolute")
        if self.format not in DISK_FORMATS:
            raise ValueError(f"disk {self.name!r}: format {self.format!r} is not qcow2 or raw")
        if self.block and self.format != "raw":
            raise ValueError(f"disk {self.name!r}: a block device is used raw")


@dataclass(frozen=True, slots=True)
class NicBacking:
    """The tap device (created by the agent) behind the spec interface of the same name."""

    name: str
    tap: str
    mac: str
    mtu: int = 0  # 0: leave the MTU to QEMU's default
    queues: int = 1  # >1: virtio-net multiqueue; the tap must be created multi_queue

    def __post_init__(self) -> None:
        if not self.tap or len(self.tap) > 15:
            raise ValueError(f"interface {self.name!r}: tap name {self.tap!r} is not 1-15 chars")
        if self.queues < 1:
            raise ValueError(f"interface {self.name!r}: queues must be at least 1")
