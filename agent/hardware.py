"""A VM's machine settings beyond CPU, memory and disks: features, clock, input, display,
watchdog and I/O threads, as frozen dataclasses (KubeVirt's names; ``agent.spec`` parses)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "HYPERV_ENLIGHTENMENTS",
    "NIC_MODELS",
    "Clock",
    "Features",
    "Hardware",
    "Hyperv",
    "Input",
    "Timer",
    "Tpm",
    "Watchdog",
]

# KubeVirt's FeatureHyperv fields that are plain on/off switches, in libvirt's order.
HYPERV_ENLIGHTENMENTS = (
    "relaxed",
    "vapic",
    "vpindex",
    "runtime",
    "synic",
    "reset",
    "frequencies",
    "reenlightenment",
    "ipi",
    "evmcs",
)
NIC_MODELS = ("virtio", "e1000", "e1000e", "rtl8139")


@dataclass(frozen=True, slots=True)
class Hyperv:
    """Hyper-V enlightenments: the switches turned on, and the ones with settings."""

    enabled: tuple[str, ...] = ()  # names from HYPERV_ENLIGHTENMENTS
    spinlocks: int | None = None  # retries; None: off
    synic_timer: bool = False
    synic_timer_direct: bool = False
    tlb_flush: bool = False
    vendor_id: str = ""


@dataclass(frozen=True, slots=True)
class Features:
    """Machine features; ACPI and the APIC are on unless turned off (KubeVirt's default)."""

    acpi: bool = True
    apic: bool = True
    apic_eoi: bool | None = None
    smm: bool | None = None  # None: on only for secure boot
    hyperv: Hyperv | None = None
    kvm_hidden: bool = False
    pvspinlock: bool | None = None


@dataclass(frozen=True, slots=True)
class Timer:
    """One guest timer (hpet, pit, rtc, kvm or hyperv)."""

    name: str
    present: bool | None = None
    tick_policy: str = ""
    track: str = ""


@dataclass(frozen=True, slots=True)
class Clock:
    """The guest clock: UTC (optionally shifted) or a named time zone, and its timers."""

    timezone: str = ""  # empty: UTC
    offset_seconds: int = 0
    timers: tuple[Timer, ...] = ()


@dataclass(frozen=True, slots=True)
class Input:
    """A pointing device (a tablet, so the pointer follows the client's absolutely)."""

    name: str
    type: str = "tablet"
    bus: str = "usb"


@dataclass(frozen=True, slots=True)
class Watchdog:
    """An i6300esb watchdog and what happens when the guest stops feeding it."""

    name: str
    action: str = "reset"  # poweroff, reset or shutdown


@dataclass(frozen=True, slots=True)
class Tpm:
    """An emulated TPM 2.0 (swtpm); libvirt keeps its state per VM until the VM is deleted."""

    persistent: bool = False  # as written; the state is kept across restarts either way


@dataclass(frozen=True, slots=True)
class Hardware:
    """Everything here defaults to what a VM gets without asking."""

    features: Features = Features()
    clock: Clock = Clock()
    inputs: tuple[Input, ...] = ()
    video: str = ""  # a display adapter model; empty: none
    autoattach_graphics: bool | None = None  # as written (true: a vga adapter)
    watchdog: Watchdog | None = None
    io_threads_policy: str = ""  # "", shared or auto
    block_multi_queue: bool = False
    network_interface_multiqueue: bool | None = None  # None: one queue per vCPU
    tpm: Tpm | None = None
