"""Property tests: generated VM specs and arbitrary bytes never make the agent fail inside.

Every answer is OK or a client error naming what is wrong, never INTERNAL or UNKNOWN, and a
refused spec leaves no domain, file, cache entry, tap or address behind. Hypothesis runs
derandomized (the same examples on every run) so CI is reproducible.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from agent.api._gen.virtagent.v1 import vm_pb2
from agent.api._gen.virtagent.v1 import vm_service_pb2 as pb
from tests.api.fuzzagent import FuzzAgent, fuzz_agent

FUZZ = settings(
    max_examples=1000,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.function_scoped_fixture,
        HealthCheck.data_too_large,
    ],
)
CLIENT_ERRORS = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION}
# "<field path>: <problem>", the field as the client spelled it (spec.template..., name).
NAMES_A_FIELD = re.compile(r"^[A-Za-z_][\w.\[\]-]*: \S")


def mostly(valid: st.SearchStrategy[Any], wrong: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``valid`` 19 times in 20: a spec then holds one or two wrong fields, not ten."""
    # Not 0: Hypothesis favours small numbers and bounds, and shrinks towards them.
    return st.integers(0, 19).flatmap(lambda roll: wrong if roll == 7 else valid)


def _some(choices: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    """Dicts holding any subset of ``choices`` (field name → value strategy)."""
    return st.fixed_dictionaries({}, optional=choices)


U32 = mostly(st.integers(1, 4), st.one_of(st.just(0), st.integers(0, 2**32 - 1)))
I32 = mostly(st.integers(1, 65535), st.integers(-(2**31), 2**31 - 1))
I64 = mostly(st.integers(0, 600), st.integers(-(2**63), 2**63 - 1))
TEXT = st.text(max_size=12)
LABEL = st.from_regex(r"[a-z]([a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True)
NAME = mostly(LABEL, st.one_of(st.sampled_from(["", "-x", "A", "a" * 64, "a_b", "a.b"]), TEXT))
QUANTITY = mostly(
    st.sampled_from(["64Mi", "128Mi", "1Gi", "100M", "1G"]),
    st.one_of(
        st.sampled_from(["0", "-1Mi", "1.5Gi", "1e3", "1Ei", "x", "0.5", "1m"]),
        st.from_regex(
            r"-?[0-9]{1,20}(\.[0-9]{1,3})?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|m|e[0-9]{1,3})?",
            fullmatch=True,
        ),
        TEXT,
    ),
)  # fmt: skip
PATH = mostly(
    st.just("base.qcow2"),
    st.one_of(
        st.sampled_from(
            ["vmlinuz", "missing.qcow2", "../base.qcow2", "/etc/passwd", "", ".", "./base.qcow2",
             "images/base.qcow2", "a/../base.qcow2", "/", "base.qcow2/"]
        ),
        TEXT,
    ),
)  # fmt: skip
BUS = mostly(st.sampled_from(["virtio", "sata", "scsi"]), st.sampled_from(["usb", "ide", "", "x"]))
DEVICE = mostly(st.sampled_from(["root", "data", "seed"]), NAME)


def _volume_source() -> st.SearchStrategy[dict[str, Any]]:
    cloud_init = _some(
        {
            "userData": mostly(st.just("#cloud-config\n"), TEXT),
            "userDataBase64": mostly(st.just("I2Nsb3VkLWNvbmZpZwo="), TEXT),
            "networkData": mostly(st.just("version: 2\n"), TEXT),
            "secretRef": st.builds(lambda n: {"name": n}, mostly(st.just("seed"), NAME)),
        }
    )
    return st.one_of(
        st.builds(lambda p: {"imageFile": {"path": p}}, PATH),
        st.builds(lambda p: {"imageFile": {"path": p}}, PATH),
        st.builds(lambda q: {"emptyDisk": {"capacity": q}}, QUANTITY),
        st.builds(
            lambda p, t, q: {"hostDisk": {"path": p, "type": t, "capacity": q}},
            mostly(st.just("HOSTDISK"), PATH),
            mostly(st.just("DiskOrCreate"), st.one_of(st.sampled_from(["Disk", ""]), TEXT)),
            QUANTITY,
        ),
        st.builds(lambda d: {"cloudInitNoCloud": d}, cloud_init),
        st.builds(
            lambda i, p, d: {"containerDisk": {"image": i, "imagePullPolicy": p, "path": d}},
            st.one_of(st.sampled_from(["registry.test/disk:1", "", "UPPER/x", "a@sha256:1"]), TEXT),
            st.sampled_from(["Never", "IfNotPresent", "Always", "", "Sometimes"]),
            st.one_of(st.just(""), PATH),
        ),
    )


def _disk(name: str) -> st.SearchStrategy[dict[str, Any]]:
    target = mostly(
        st.builds(lambda b, r: {"disk": {"bus": b, "readonly": r}}, BUS, st.booleans()),
        st.one_of(st.builds(lambda b: {"cdrom": {"bus": b}}, BUS), st.just({})),
    )
    extra = _some({"bootOrder": U32, "serial": TEXT, "cache": st.sampled_from(["none", "x", ""])})
    named = mostly(st.just(name), NAME)
    return st.builds(lambda n, t, e: {"name": n, **t, **e}, named, target, extra)


def _nic() -> st.SearchStrategy[tuple[dict[str, Any], dict[str, Any]]]:
    """An interface and its network, usually matching."""
    port = _some(
        {"name": NAME, "port": I32, "protocol": st.sampled_from(["TCP", "UDP", "x", ""]),
         "nodePort": mostly(st.just(0), I32)}
    )  # fmt: skip
    binding = mostly(st.just({"masquerade": {}}), st.sampled_from([{"bridge": {}}, {}]))
    extra = _some(
        {
            "ports": st.lists(port, max_size=2),
            "macAddress": mostly(
                st.just("02:00:00:00:00:01"), st.one_of(st.just("ff:ff:ff:ff:ff:ff"), TEXT)
            ),  # fmt: skip
            "model": st.sampled_from(["virtio", "e1000", "x"]),
        }
    )
    name = mostly(st.just("default"), NAME)
    multus = st.builds(lambda n: {"multus": {"networkName": n}}, NAME)
    source = mostly(st.just({"pod": {}}), st.one_of(multus, st.just({})))
    return st.tuples(
        st.builds(lambda n, b, e: {"name": n, **b, **e}, name, binding, extra),
        st.builds(lambda n, s: {"name": n, **s}, mostly(st.just("default"), name), source),
    )


@st.composite
def vm_documents(draw: st.DrawFn) -> dict[str, Any]:
    """A VirtualMachine as a client could send it: usually valid, often with a wrong field."""
    names = draw(st.lists(DEVICE, max_size=3))
    volumes = [{"name": name, **draw(_volume_source())} for name in names]
    disks = [draw(_disk(name)) for name in names]
    nics = draw(st.lists(_nic(), max_size=2))
    firmware = _some(
        {
            "bootloader": st.sampled_from(
                [{"bios": {}}, {"efi": {}}, {"efi": {"secureBoot": True}}, {}]
            ),
            "kernelBoot": st.builds(
                lambda k, i, a: {"kernelArgs": a, "container": {"kernelPath": k, "initrdPath": i}},
                mostly(st.just("vmlinuz"), PATH), mostly(st.just(""), PATH), TEXT,
            ),
        }
    )  # fmt: skip
    domain = draw(
        _some(
            {
                "cpu": _some(
                    {
                        "cores": U32,
                        "sockets": U32,
                        "threads": U32,
                        "model": mostly(st.just("host-model"), TEXT),
                    }
                ),  # fmt: skip
                "resources": _some(
                    {
                        "requests": st.dictionaries(
                            st.sampled_from(["memory", "cpu", "x"]), QUANTITY, max_size=2
                        )
                    }
                ),  # fmt: skip
                "machine": _some({"type": mostly(st.just("q35"), TEXT)}),
                "firmware": firmware,
            }
        )
    )
    domain["memory"] = draw(mostly(st.builds(lambda q: {"guest": q}, QUANTITY), st.just({})))
    domain["devices"] = {"disks": disks, "interfaces": [i for i, _ in nics]}
    instance = draw(_some({"terminationGracePeriodSeconds": I64, "hostname": mostly(LABEL, TEXT)}))
    instance.update(domain=domain, volumes=volumes, networks=[n for _, n in nics])
    metadata = {
        "namespace": draw(mostly(st.just("default"), NAME)),
        "name": draw(NAME),
        "labels": draw(st.dictionaries(mostly(LABEL, TEXT), mostly(LABEL, TEXT), max_size=2)),
    }
    strategies = st.sampled_from(["Always", "Halted", "Manual", "RerunOnFailure"])
    strategy = draw(mostly(strategies, TEXT))
    return {"metadata": metadata, "spec": {"runStrategy": strategy, "template": {"spec": instance}}}


@pytest.fixture(scope="module")
def fuzzed() -> Iterator[FuzzAgent]:
    with fuzz_agent() as agent:
        yield agent


def _check_answer(agent: FuzzAgent, doc: dict[str, Any]) -> None:
    text = json.dumps(doc).replace("HOSTDISK", str(agent.root / "hostdisks" / "disk.img"))
    vm = json_format.Parse(text, vm_pb2.VirtualMachine())
    try:
        reply = agent.vms.ApplyVirtualMachine(pb.ApplyVirtualMachineRequest(vm=vm), timeout=30)
    except grpc.RpcError as error:
        event(f"refused: {error.details().partition(':')[0]}")  # --hypothesis-show-statistics
        assert error.code() in CLIENT_ERRORS, (error.code(), error.details(), doc)
        assert NAMES_A_FIELD.match(error.details()), (error.details(), doc)
        assert agent.leftovers() == {}, (error.details(), doc)
        return
    event("applied")
    request = pb.DeleteVirtualMachineRequest(
        namespace=reply.vm.metadata.namespace, name=reply.vm.metadata.name, grace_period_seconds=0
    )
    agent.vms.DeleteVirtualMachine(request, timeout=30)
    for disk in (agent.root / "hostdisks").iterdir():
        disk.unlink()  # host disks outlive their VM by design
    assert agent.leftovers() == {}, doc


@FUZZ
@given(doc=vm_documents())
@example(doc={"metadata": {"namespace": "default", "name": "web"}, "spec": {}})
@example(  # found by this test: a control character in kernelArgs broke the domain XML
    doc={
        "metadata": {"namespace": "default", "name": "a"},
        "spec": {
            "template": {
                "spec": {
                    "domain": {
                        "memory": {"guest": "64Mi"},
                        "firmware": {
                            "kernelBoot": {
                                "kernelArgs": "\x01",
                                "container": {"kernelPath": "vmlinuz"},
                            }
                        },
                    }
                }
            }
        },
    }
)
@example(  # found by this test: base64 text that is not ASCII was INTERNAL
    doc={
        "metadata": {"namespace": "default", "name": "a"},
        "spec": {
            "template": {
                "spec": {
                    "domain": {"memory": {"guest": "64Mi"}},
                    "volumes": [{"name": "seed", "cloudInitNoCloud": {"userDataBase64": "\x80"}}],
                }
            }
        },
    }
)
def test_generated_specs_are_applied_or_refused_naming_a_field(
    fuzzed: FuzzAgent, doc: dict[str, Any]
) -> None:
    _check_answer(fuzzed, doc)


UNARY = [
    "/virtagent.v1.VirtualMachineService/" + method
    for method in ("ApplyVirtualMachine", "GetVirtualMachine", "ListVirtualMachines",
                   "StartVirtualMachine", "StopVirtualMachine", "RestartVirtualMachine",
                   "PauseVirtualMachine", "ResumeVirtualMachine", "DeleteVirtualMachine")
] + ["/virtagent.v1.NodeService/GetNode", "/virtagent.v1.MigrationService/CancelMigration",
     "/grpc.health.v1.Health/Check"]  # fmt: skip
STREAMS = [
    "/virtagent.v1.VirtualMachineService/WatchVirtualMachines",
    "/virtagent.v1.VirtualMachineService/GetConsoleLog",
]
NOT_AGENT_FAULTS = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}


@FUZZ
@given(method=st.sampled_from(UNARY + STREAMS), data=st.binary(max_size=256))
@example(method=UNARY[0], data=b"\x0a\x02\xff\xfe")  # a string field that is not UTF-8
@example(method=UNARY[1], data=b"\x08")  # a truncated varint
def test_arbitrary_bytes_as_requests_are_never_an_agent_fault(
    fuzzed: FuzzAgent, method: str, data: bytes
) -> None:
    if method in STREAMS:
        call = fuzzed.channel.unary_stream(method)(data, timeout=5)
        try:
            next(iter(call), None)
        except grpc.RpcError as error:
            assert error.code() not in NOT_AGENT_FAULTS, (error.code(), error.details())
        finally:
            call.cancel()
        return
    try:
        fuzzed.channel.unary_unary(method)(data, timeout=10)
    except grpc.RpcError as error:
        assert error.code() not in NOT_AGENT_FAULTS, (error.code(), error.details())
