"""Parsing of machine settings: domain.features, domain.clock, input, display, watchdog, I/O
threads (KubeVirt's fields; the models are in ``agent.hardware``)."""

from __future__ import annotations

import re

from agent.errors import InvalidSpec
from agent.hardware import (
    HYPERV_ENLIGHTENMENTS,
    Clock,
    Features,
    Hardware,
    Hyperv,
    Input,
    Timer,
    Tpm,
    Watchdog,
)
from agent.spec.limits import MAX_INPUTS
from agent.spec.reader import Node, choice, one_of, validate_name

__all__ = ["parse_hardware"]

_TIMERS = ("hpet", "kvm", "pit", "rtc", "hyperv")
_TICK_POLICIES = ("delay", "catchup", "merge", "discard")
_VIDEO_MODELS = ("virtio", "vga", "bochs", "cirrus")
_TIMEZONE = re.compile(r"^[A-Za-z][A-Za-z0-9_+-]*(/[A-Za-z0-9_+-]+)*$")
_MIN_SPINLOCKS = 4095  # KubeVirt's and Hyper-V's floor
_MAX_OFFSET = 14 * 24 * 3600
_ACTIONS = ("poweroff", "reset", "shutdown")


def parse_hardware(domain: Node, devices: Node) -> Hardware:
    """The machine settings of ``domain`` (features, clock, ioThreadsPolicy) and of its
    ``devices`` (inputs, video, watchdog, queues); reads only those keys."""
    policy = domain.get("ioThreadsPolicy", str, "")
    if policy and policy not in ("shared", "auto"):
        raise InvalidSpec(domain.at("ioThreadsPolicy"), f"{policy!r} is not shared or auto")
    inputs = tuple(_input(n) for n in devices.items("inputs", MAX_INPUTS))
    _unique_names([i.name for i in inputs], devices.at("inputs"))
    video = devices.child("video")
    video_model = choice(video, "type", _VIDEO_MODELS, "vga") if video is not None else ""
    if video is not None:
        video.done()
    return Hardware(
        features=_features(domain.child("features")),
        clock=_clock(domain.child("clock")),
        inputs=inputs,
        video=video_model,
        autoattach_graphics=_optional_bool(devices, "autoattachGraphicsDevice"),
        watchdog=_watchdog(devices.child("watchdog")),
        io_threads_policy=policy,
        block_multi_queue=devices.get("blockMultiQueue", bool, False),
        network_interface_multiqueue=_optional_bool(devices, "networkInterfaceMultiqueue"),
        tpm=_tpm(devices.child("tpm")),
    )


def _tpm(node: Node | None) -> Tpm | None:
    if node is None or not node.get("enabled", bool, True):
        return None
    tpm = Tpm(persistent=node.get("persistent", bool, False))
    node.done()
    return tpm


def _optional_bool(node: Node, key: str) -> bool | None:
    value: bool | None = node.get(key, bool, None)
    return value


def _state(node: Node | None, *extra: str) -> bool | None:
    """A KubeVirt FeatureState: absent is None; present is on unless ``enabled: false``."""
    if node is None:
        return None
    node.allowed.update(extra)
    enabled = node.get("enabled", bool, True)
    node.done()
    return enabled


def _features(node: Node | None) -> Features:
    if node is None:
        return Features()
    apic = node.child("apic")
    eoi = _optional_bool(apic, "endOfInterrupt") if apic is not None else None
    kvm = node.child("kvm")
    hidden = kvm.get("hidden", bool, False) if kvm is not None else False
    if kvm is not None:
        kvm.done()
    features = Features(
        acpi=_state(node.child("acpi")) is not False,
        apic=_state(apic) is not False,
        apic_eoi=eoi,
        smm=_state(node.child("smm")),
        hyperv=_hyperv(node.child("hyperv")),
        kvm_hidden=hidden,
        pvspinlock=_state(node.child("pvspinlock")),
    )
    node.done()
    return features


def _hyperv(node: Node | None) -> Hyperv | None:
    if node is None:
        return None
    enabled = tuple(n for n in HYPERV_ENLIGHTENMENTS if _state(node.child(n)))
    spinlocks = node.child("spinlocks")
    retries = None
    if spinlocks is not None and spinlocks.get("enabled", bool, True):
        retries = spinlocks.get("spinlocks", int, 8191)
        if retries < _MIN_SPINLOCKS:
            raise InvalidSpec(spinlocks.at("spinlocks"), f"must be at least {_MIN_SPINLOCKS}")
    if spinlocks is not None:
        spinlocks.done()
    timer = node.child("synictimer")
    timer_direct = _state(timer.child("direct")) if timer is not None else None
    flush = node.child("tlbflush")  # direct/extended: not in libvirt 9.0's schema, refused
    vendor = node.child("vendorid")
    vendor_id = _vendor_id(vendor) if vendor is not None else ""
    hyperv = Hyperv(
        enabled=enabled,
        spinlocks=retries,
        synic_timer=bool(_state(timer, "direct")),
        synic_timer_direct=bool(timer_direct),
        tlb_flush=bool(_state(flush)),
        vendor_id=vendor_id,
    )
    node.done()
    return hyperv


def _vendor_id(node: Node) -> str:
    value = node.get("vendorid", str, "")
    if not node.get("enabled", bool, True):
        value = ""
    elif not re.match(r"^[A-Za-z0-9_]{1,12}$", value):
        raise InvalidSpec(node.at("vendorid"), "must be 1-12 letters, digits or _")
    node.done()
    return value


def _clock(node: Node | None) -> Clock:
    if node is None:
        return Clock()
    zone = node.get("timezone", str, "")
    if zone and (len(zone) > 64 or not _TIMEZONE.match(zone)):
        raise InvalidSpec(node.at("timezone"), f"{zone!r} is not a time zone name")
    utc = node.child("utc")
    offset = 0
    if utc is not None:
        if zone:
            raise InvalidSpec(node.path, "set only one of utc, timezone")
        offset = utc.get("offsetSeconds", int, 0)
        if abs(offset) > _MAX_OFFSET:
            raise InvalidSpec(utc.at("offsetSeconds"), "must be within 14 days")
        utc.done()
    timers = _timers(node.child("timer"))
    node.done()
    return Clock(timezone=zone, offset_seconds=offset, timers=timers)


def _timers(node: Node | None) -> tuple[Timer, ...]:
    if node is None:
        return ()
    timers = []
    for name in _TIMERS:
        timer = node.child(name)
        if timer is None:
            continue
        present = _optional_bool(timer, "present")
        policy = ""
        if name in ("hpet", "pit", "rtc"):
            policy = choice(timer, "tickPolicy", ("", *_TICK_POLICIES), "")
        track = choice(timer, "track", ("", "guest", "wall"), "") if name == "rtc" else ""
        timer.done()
        timers.append(Timer(name, present, policy, track))
    node.done()
    return tuple(timers)


def _input(node: Node) -> Input:
    name = validate_name(node.at("name"), node.get("name", str, ""))
    kind = choice(node, "type", ("tablet",), "tablet")
    bus = choice(node, "bus", ("usb", "virtio"), "usb")
    node.done()
    return Input(name, kind, bus)


def _watchdog(node: Node | None) -> Watchdog | None:
    if node is None:
        return None
    name = validate_name(node.at("name"), node.get("name", str, ""))
    action = one_of(node, {"i6300esb": lambda n: choice(n, "action", _ACTIONS, "reset")})
    if action is None:
        raise InvalidSpec(node.path, "needs a device: i6300esb")
    node.done()
    return Watchdog(name, action)


def _unique_names(names: list[str], field: str) -> None:
    seen: set[str] = set()
    for index, name in enumerate(names):
        if name in seen:
            raise InvalidSpec(f"{field}[{index}].name", f"{name!r} is used twice")
        seen.add(name)
