"""Render machine settings (``agent.hardware``) back into KubeVirt's fields: the inverse of
``agent.spec.hardware``."""

from __future__ import annotations

from typing import Any

from agent.hardware import Clock, Features, Hardware, Hyperv

__all__ = ["render_domain_hardware", "render_device_hardware"]


def render_domain_hardware(hardware: Hardware) -> dict[str, Any]:
    """The domain-level keys: features, clock, ioThreadsPolicy (only what differs)."""
    out: dict[str, Any] = {}
    if hardware.features != Features():
        out["features"] = _features(hardware.features)
    if hardware.clock != Clock():
        out["clock"] = _clock(hardware.clock)
    if hardware.io_threads_policy:
        out["ioThreadsPolicy"] = hardware.io_threads_policy
    return out


def render_device_hardware(hardware: Hardware) -> dict[str, Any]:
    """The devices-level keys: inputs, video, watchdog and queue switches."""
    out: dict[str, Any] = {}
    if hardware.inputs:
        out["inputs"] = [{"name": i.name, "type": i.type, "bus": i.bus} for i in hardware.inputs]
    if hardware.video:
        out["video"] = {"type": hardware.video}
    if hardware.autoattach_graphics is not None:
        out["autoattachGraphicsDevice"] = hardware.autoattach_graphics
    if hardware.watchdog is not None:
        watchdog = hardware.watchdog
        out["watchdog"] = {"name": watchdog.name, "i6300esb": {"action": watchdog.action}}
    if hardware.block_multi_queue:
        out["blockMultiQueue"] = True
    if hardware.tpm is not None:
        out["tpm"] = {"persistent": True} if hardware.tpm.persistent else {}
    if hardware.network_interface_multiqueue is not None:
        out["networkInterfaceMultiqueue"] = hardware.network_interface_multiqueue
    return out


def _state(enabled: bool) -> dict[str, Any]:
    return {"enabled": enabled}


def _features(features: Features) -> dict[str, Any]:
    out: dict[str, Any] = {"acpi": _state(features.acpi), "apic": _state(features.apic)}
    if features.apic_eoi is not None:
        out["apic"]["endOfInterrupt"] = features.apic_eoi
    if features.smm is not None:
        out["smm"] = _state(features.smm)
    if features.hyperv is not None:
        out["hyperv"] = _hyperv(features.hyperv)
    if features.kvm_hidden:
        out["kvm"] = {"hidden": True}
    if features.pvspinlock is not None:
        out["pvspinlock"] = _state(features.pvspinlock)
    return out


def _hyperv(hyperv: Hyperv) -> dict[str, Any]:
    out: dict[str, Any] = {name: {} for name in hyperv.enabled}
    if hyperv.spinlocks is not None:
        out["spinlocks"] = {"spinlocks": hyperv.spinlocks}
    if hyperv.synic_timer:
        out["synictimer"] = {"direct": {}} if hyperv.synic_timer_direct else {}
    if hyperv.tlb_flush:
        out["tlbflush"] = {}
    if hyperv.vendor_id:
        out["vendorid"] = {"vendorid": hyperv.vendor_id}
    return out


def _clock(clock: Clock) -> dict[str, Any]:
    out: dict[str, Any] = (
        {"timezone": clock.timezone}
        if clock.timezone
        else {"utc": {"offsetSeconds": clock.offset_seconds} if clock.offset_seconds else {}}
    )
    timers: dict[str, Any] = {}
    for timer in clock.timers:
        fields = {"present": timer.present, "tickPolicy": timer.tick_policy, "track": timer.track}
        timers[timer.name] = {k: v for k, v in fields.items() if v not in (None, "")}
    if timers:
        out["timer"] = timers
    return out
