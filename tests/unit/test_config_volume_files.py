"""Config volumes: the node-file layout under --secrets-dir, config drives, secret /
configMap / serviceAccount ISOs, SSH keys in cloud-init meta data, and the spec fields."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pycdlib
import pytest

from agent.adapters.iso import PycdlibIso
from agent.api.convert import spec_from_proto
from agent.cli.kubevirt import load_manifests
from agent.disks.cloudinit import config_drive_seed, nocloud_seed
from agent.disks.configfiles import object_folder, read_object, require_object
from agent.domain.files import VMFiles, VolumeSupport
from agent.domain.lifecycle import VMService
from agent.domain.plan import HostPlan
from agent.domain.vmcache import VMCache
from agent.domain.xml import build_domain
from agent.errors import InvalidSpec
from agent.models import (
    CloudInitConfigDrive,
    CloudInitNoCloud,
    ConfigKind,
    ConfigVolume,
    Disk,
    Propagation,
    SSHKeyCredential,
    VMSpec,
    Volume,
)
from agent.spec import parse_vm, render_vm
from tests.unit.disk_fakes import FakeImages, FakeIso
from tests.unit.fake_clock import FakeClock
from tests.unit.fake_hypervisor import FakeHypervisor

UID = "0d6f4c1e-8f0a-4b7e-9a57-3d1b3c2e8f90"
FIELD = "spec.template.spec.volumes[0].secret"
KEY_A = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAAAA alice@example"
KEY_B = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBBBB bob@example"


def vm(*volumes: Volume, credentials: tuple[SSHKeyCredential, ...] = ()) -> VMSpec:
    return VMSpec(
        namespace="team-a",
        name="web",
        uid=UID,
        disks=tuple(Disk(v.name) for v in volumes),
        volumes=volumes,
        access_credentials=credentials,
    )


def write(root: Path, relative: str, data: bytes) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


# -- the node-file layout --------------------------------------------------------------


def test_each_kind_has_its_own_folder_per_namespace(tmp_path: Path) -> None:
    root = str(tmp_path)
    assert object_folder(root, "team-a", ConfigKind.SECRET, "db") == f"{root}/team-a/db"
    assert object_folder(root, "team-a", ConfigKind.CONFIG_MAP, "db") == (
        f"{root}/team-a/_configmaps/db"
    )
    assert object_folder(root, "team-a", ConfigKind.SERVICE_ACCOUNT, "db") == (
        f"{root}/team-a/_serviceaccounts/db"
    )
    write(tmp_path, "team-a/db/password", b"s3cret")
    write(tmp_path, "team-a/_configmaps/db/app.conf", b"port=5432\n")
    write(tmp_path, "team-b/db/password", b"other namespace")
    assert read_object(root, "team-a", ConfigKind.SECRET, "db", FIELD) == {"password": b"s3cret"}
    assert read_object(root, "team-a", ConfigKind.CONFIG_MAP, "db", FIELD) == {
        "app.conf": b"port=5432\n"
    }
    assert read_object(root, "team-a", ConfigKind.SERVICE_ACCOUNT, "db", FIELD) is None


def test_a_missing_object_is_named_with_where_it_was_looked_for(tmp_path: Path) -> None:
    with pytest.raises(InvalidSpec) as caught:
        require_object(str(tmp_path), "team-a", ConfigKind.SECRET, "db-creds", FIELD)
    assert caught.value.field == FIELD
    assert f"secret team-a/db-creds not found under {tmp_path}" in caught.value.problem
    with pytest.raises(InvalidSpec, match="config map team-a/app not found"):
        require_object(str(tmp_path), "team-a", ConfigKind.CONFIG_MAP, "app", FIELD)
    with pytest.raises(InvalidSpec, match=r"--secrets-dir"):
        require_object("", "team-a", ConfigKind.SECRET, "db", FIELD)


def test_kubelet_bookkeeping_entries_are_skipped_and_dot_keys_kept(tmp_path: Path) -> None:
    write(tmp_path, "team-a/pull/.dockerconfigjson", b"{}")
    write(tmp_path, "team-a/pull/..2026_12_01/x", b"kubelet's")
    keys = read_object(str(tmp_path), "team-a", ConfigKind.SECRET, "pull", FIELD)
    assert keys == {".dockerconfigjson": b"{}"}


@pytest.mark.parametrize("name", ["..", "../team-b", "a/b", "UPPER", "-x", ""])
def test_hostile_names_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(InvalidSpec, match="is not a valid"):
        read_object(str(tmp_path), "team-a", ConfigKind.SECRET, name, FIELD)
    with pytest.raises(InvalidSpec, match="is not a valid namespace"):
        read_object(str(tmp_path), name, ConfigKind.SECRET, "db", FIELD)


@pytest.mark.parametrize("where", ["namespace", "object", "key", "kind folder"])
def test_symlinks_anywhere_are_refused_not_followed(tmp_path: Path, where: str) -> None:
    outside = tmp_path / "outside"
    write(outside, "password", b"host secret")
    root = tmp_path / "secrets"
    kind = ConfigKind.CONFIG_MAP if where == "kind folder" else ConfigKind.SECRET
    if where == "namespace":
        root.mkdir()
        (root / "team-a").symlink_to(outside.parent)
    elif where == "object":
        (root / "team-a").mkdir(parents=True)
        (root / "team-a" / "db").symlink_to(outside)
    elif where == "kind folder":
        (root / "team-a").mkdir(parents=True)
        (root / "team-a" / "_configmaps").symlink_to(tmp_path)
    else:
        (root / "team-a" / "db").mkdir(parents=True)
        (root / "team-a" / "db" / "password").symlink_to(outside / "password")
    name = "outside" if where == "kind folder" else "db"
    with pytest.raises(InvalidSpec) as caught:
        read_object(str(root), "team-a", kind, name, FIELD)
    assert "symlink" in caught.value.problem or "not a key" in caught.value.problem
    assert caught.value.field == FIELD


def test_a_folder_or_a_bad_key_name_in_an_object_is_refused(tmp_path: Path) -> None:
    (tmp_path / "team-a" / "db" / "sub").mkdir(parents=True)
    with pytest.raises(InvalidSpec, match="'sub' is not a key"):
        read_object(str(tmp_path), "team-a", ConfigKind.SECRET, "db", FIELD)
    write(tmp_path, "team-a/db2/" + "k" * 65, b"x")
    with pytest.raises(InvalidSpec, match="is not a key"):
        read_object(str(tmp_path), "team-a", ConfigKind.SECRET, "db2", FIELD)


# -- config volumes as ISOs ------------------------------------------------------------


def test_a_secret_volume_is_a_read_only_iso_with_a_file_per_key(tmp_path: Path) -> None:
    secrets = tmp_path / "secrets"
    write(secrets, "team-a/db-creds/username", b"admin")
    write(secrets, "team-a/db-creds/password", b"s3cret")
    write(secrets, "team-a/_configmaps/app/app.conf", b"port=5432\n")
    iso = FakeIso()
    files = VMFiles(str(tmp_path / "state"), [], FakeImages(),
                    VolumeSupport(iso=iso, secrets_dir=str(secrets)))  # fmt: skip
    spec = vm(
        Volume("creds", ConfigVolume(ConfigKind.SECRET, "db-creds", volume_label="CREDS")),
        Volume("app", ConfigVolume(ConfigKind.CONFIG_MAP, "app")),
        Volume("maybe", ConfigVolume(ConfigKind.SECRET, "absent", optional=True)),
    )
    creds, app, maybe = files.prepare(spec, "team-a_web").disks
    assert creds.readonly and app.readonly and maybe.readonly and creds.format == "raw"
    assert iso.written[creds.path] == {"username": b"admin", "password": b"s3cret"}
    assert iso.labels[creds.path] == "CREDS" and iso.labels[app.path] == ""
    assert iso.written[app.path] == {"app.conf": b"port=5432\n"}
    assert iso.written[maybe.path] == {}  # optional and missing: an empty ISO
    element = build_domain(
        spec, HostPlan(domain_name="team-a_web", uuid=UID, disks=(creds, app, maybe))
    )
    assert [d.find("readonly") is not None for d in element.iterfind("devices/disk")] == [
        True, True, True,
    ]  # fmt: skip


def test_a_missing_secret_fails_the_start_and_leaves_no_vm_folder(tmp_path: Path) -> None:
    support = VolumeSupport(iso=FakeIso(), secrets_dir=str(tmp_path / "secrets"))
    files = VMFiles(str(tmp_path / "state"), [], FakeImages(), support)
    spec = vm(Volume("creds", ConfigVolume(ConfigKind.SECRET, "db-creds")))
    with pytest.raises(InvalidSpec) as caught:
        files.prepare(spec, "team-a_web")
    assert caught.value.field == FIELD
    assert "secret team-a/db-creds not found under" in caught.value.problem
    assert not files.vm_exists("team-a_web")


def test_the_real_iso_holds_nested_config_drive_paths(tmp_path: Path) -> None:
    seed = config_drive_seed(
        vm(), CloudInitConfigDrive(user_data="#!/bin/sh\n", network_data='{"links": []}'),
        secrets_dir="", field=FIELD,
    )  # fmt: skip
    path = tmp_path / "drive.iso"
    PycdlibIso().write_iso(str(path), "config-2", seed.files)
    iso = pycdlib.PyCdlib()
    iso.open(str(path))
    try:
        assert iso.pvd.volume_identifier.rstrip() == b"config-2"
        for name in ("meta_data.json", "user_data", "network_data.json"):
            out = io.BytesIO()
            iso.get_file_from_iso_fp(out, rr_path=f"/openstack/latest/{name}")
            assert out.getvalue() == seed.files[f"openstack/latest/{name}"]
    finally:
        iso.close()
    meta = json.loads(seed.files["openstack/latest/meta_data.json"])
    assert meta == {"uuid": UID, "instance_id": "web.team-a", "hostname": "web"}


def test_a_config_drive_volume_is_written_with_the_config_2_label(tmp_path: Path) -> None:
    iso = FakeIso()
    files = VMFiles(str(tmp_path), [], FakeImages(), VolumeSupport(iso=iso))
    spec = vm(Volume("cfg", CloudInitConfigDrive(user_data="#cloud-config\n")))
    [backing] = files.prepare(spec, "team-a_web").disks
    assert iso.labels[backing.path] == "config-2" and not backing.readonly
    assert iso.written[backing.path]["openstack/latest/user_data"] == b"#cloud-config\n"


def test_nocloud_with_only_network_data_has_an_empty_user_data() -> None:
    seed = nocloud_seed(vm(), CloudInitNoCloud(network_data="version: 2\n"), secrets_dir="",
                        field=FIELD)  # fmt: skip
    assert seed.files["user-data"] == b""
    assert seed.files["network-config"] == b"version: 2\n"


# -- SSH keys --------------------------------------------------------------------------


def _keys_dir(tmp_path: Path) -> str:
    write(tmp_path, "team-a/my-keys/alice", f"{KEY_A}\n".encode())
    write(tmp_path, "team-a/my-keys/empty", b"\n")
    write(tmp_path, "team-a/ops-keys/bob", KEY_B.encode())
    return str(tmp_path)


def test_ssh_keys_go_into_the_nocloud_meta_data_as_kubevirt_does(tmp_path: Path) -> None:
    secrets = _keys_dir(tmp_path)
    credentials = (
        SSHKeyCredential("my-keys", Propagation.NO_CLOUD),
        SSHKeyCredential("ops-keys", Propagation.CONFIG_DRIVE),
    )
    spec = vm(credentials=credentials)
    seed = nocloud_seed(spec, CloudInitNoCloud(user_data="#cloud-config\n"),
                        secrets_dir=secrets, field=FIELD)  # fmt: skip
    assert json.loads(seed.files["meta-data"])["public-keys"] == {"0": KEY_A}
    drive = config_drive_seed(spec, CloudInitConfigDrive(user_data="x"), secrets_dir=secrets,
                              field=FIELD)  # fmt: skip
    meta = json.loads(drive.files["openstack/latest/meta_data.json"])
    assert meta["public_keys"] == {"0": KEY_B}
    assert drive.files["openstack/latest/user_data"] == b"x"  # user data left as written


def test_a_missing_key_secret_is_named(tmp_path: Path) -> None:
    spec = vm(credentials=(SSHKeyCredential("gone", Propagation.NO_CLOUD),))
    with pytest.raises(InvalidSpec) as caught:
        nocloud_seed(spec, CloudInitNoCloud(user_data="x"), secrets_dir=str(tmp_path),
                     field=FIELD)  # fmt: skip
    assert caught.value.field.startswith("spec.template.spec.accessCredentials[0]")
    assert "secret team-a/gone not found" in caught.value.problem


# -- the spec --------------------------------------------------------------------------


def _doc(volumes: list[dict[str, Any]], **instance: Any) -> dict[str, Any]:
    disks = [{"name": v["name"], "disk": {"bus": "virtio"}} for v in volumes]
    return {
        "metadata": {"namespace": "team-a", "name": "web"},
        "spec": {
            "template": {
                "spec": {
                    "domain": {"memory": {"guest": "64Mi"}, "devices": {"disks": disks}},
                    "volumes": volumes,
                    **instance,
                }
            }
        },
    }


CONFIG_VOLUMES = [
    {"name": "cfg", "cloudInitConfigDrive": {"userData": "#cloud-config\n"}},
    {"name": "s", "secret": {"secretName": "db.creds", "volumeLabel": "CREDS", "optional": True}},
    {"name": "c", "configMap": {"name": "app"}},
    {"name": "sa", "serviceAccount": {"serviceAccountName": "default"}},
]
SSH = {
    "sshPublicKey": {
        "source": {"secret": {"secretName": "my-keys"}},
        "propagationMethod": {"configDrive": {}},
    }
}


def test_config_volumes_parse_and_round_trip() -> None:
    spec = parse_vm(_doc(CONFIG_VOLUMES, accessCredentials=[SSH]))
    sources = [v.source for v in spec.volumes]
    assert sources[0] == CloudInitConfigDrive(user_data="#cloud-config\n")
    assert sources[1] == ConfigVolume(ConfigKind.SECRET, "db.creds", "CREDS", optional=True)
    assert sources[2] == ConfigVolume(ConfigKind.CONFIG_MAP, "app")
    assert sources[3] == ConfigVolume(ConfigKind.SERVICE_ACCOUNT, "default")
    assert spec.access_credentials == (SSHKeyCredential("my-keys", Propagation.CONFIG_DRIVE),)
    assert parse_vm(render_vm(spec)) == spec


INSTANCE = "spec.template.spec"


@pytest.mark.parametrize(
    ("volumes", "credentials", "field", "problem"),
    [
        ([{"name": "s", "secret": {}}], [], f"{INSTANCE}.volumes[0].secret.secretName",
         "is required"),
        ([{"name": "s", "secret": {"secretName": "../etc"}}], [],
         f"{INSTANCE}.volumes[0].secret.secretName", "not a valid secret name"),
        ([{"name": "s", "secret": {"secretName": "a", "volumeLabel": "a b"}}], [],
         f"{INSTANCE}.volumes[0].secret.volumeLabel", "must be 1-16"),
        ([{"name": "s", "secret": {"secretName": "a", "volumeLabel": "A" * 17}}], [],
         f"{INSTANCE}.volumes[0].secret.volumeLabel", "must be 1-16"),
        ([{"name": "c", "configMap": {"name": "a", "items": []}}], [],
         f"{INSTANCE}.volumes[0].configMap.items", "not supported"),
        ([{"name": "a", "serviceAccount": {"serviceAccountName": "x"}},
          {"name": "b", "serviceAccount": {"serviceAccountName": "y"}}], [],
         f"{INSTANCE}.volumes", "at most one serviceAccount"),
        ([{"name": "cfg", "cloudInitConfigDrive": {}}], [],
         f"{INSTANCE}.volumes[0].cloudInitConfigDrive", "needs userData"),
        (CONFIG_VOLUMES[:1],
         [{"sshPublicKey": {"source": {"secret": {"secretName": "k"}},
                            "propagationMethod": {"qemuGuestAgent": {"users": ["root"]}}}}],
         f"{INSTANCE}.accessCredentials[0].sshPublicKey.propagationMethod.qemuGuestAgent",
         "no guest agent channel"),
        (CONFIG_VOLUMES[:1],
         [{"sshPublicKey": {"source": {"secret": {"secretName": "k"}},
                            "propagationMethod": {"noCloud": {}}}}],
         f"{INSTANCE}.accessCredentials[0].sshPublicKey.propagationMethod",
         "noCloud needs a cloudInitNoCloud volume"),
        (CONFIG_VOLUMES[:1], [{"sshPublicKey": {"propagationMethod": {"noCloud": {}}}}],
         f"{INSTANCE}.accessCredentials[0].sshPublicKey.source.secret", "is required"),
    ],
    ids=["no-name", "dotdot", "label", "long-label", "items", "two-accounts", "empty-drive",
         "guest-agent", "no-nocloud-volume", "no-source"],
)  # fmt: skip
def test_bad_config_volumes_are_named(
    volumes: list[dict[str, Any]], credentials: list[Any], field: str, problem: str
) -> None:
    extra = {"accessCredentials": credentials} if credentials else {}
    with pytest.raises(InvalidSpec) as caught:
        parse_vm(_doc(volumes, **extra))
    assert caught.value.field == field
    assert problem in caught.value.problem


KUBEVIRT_YAML = """
apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata: {name: web}
spec:
  running: true
  template:
    spec:
      accessCredentials:
      - sshPublicKey:
          source: {secret: {secretName: my-pub-key}}
          propagationMethod: {configDrive: {}}
      domain:
        memory: {guest: 64Mi}
        devices:
          disks:
          - {name: cloudinitdisk, disk: {bus: virtio}}
          - {name: creds, disk: {}}
          - {name: app, cdrom: {}}
      volumes:
      - name: cloudinitdisk
        cloudInitConfigDrive:
          userDataBase64: IyEvYmluL3NoCmVjaG8gaGkK
      - {name: creds, secret: {secretName: db-creds}}
      - {name: app, configMap: {name: app-config, volumeLabel: APP}}
"""


def test_vmctl_maps_kubevirt_config_volumes_to_the_agent_spec() -> None:
    [manifest] = load_manifests(KUBEVIRT_YAML, default_namespace="team-a").vms
    spec = spec_from_proto(manifest.vm)
    assert spec.volume("cloudinitdisk") == Volume(
        "cloudinitdisk", CloudInitConfigDrive(user_data="#!/bin/sh\necho hi\n")
    )
    assert spec.volume("creds") == Volume("creds", ConfigVolume(ConfigKind.SECRET, "db-creds"))
    assert spec.volume("app") == Volume(
        "app", ConfigVolume(ConfigKind.CONFIG_MAP, "app-config", volume_label="APP")
    )
    assert spec.access_credentials == (SSHKeyCredential("my-pub-key", Propagation.CONFIG_DRIVE),)


def test_a_vm_sees_a_changed_secret_at_its_next_start(tmp_path: Path) -> None:
    # The docs promise it: a rotated token or a revoked key is not served again after a start.
    secrets = tmp_path / "secrets"
    write(secrets, "team-a/token/token", b"first")
    iso = FakeIso()
    files = VMFiles(str(tmp_path / "state"), [], FakeImages(),
                    VolumeSupport(iso=iso, secrets_dir=str(secrets)))  # fmt: skip
    hv = FakeHypervisor(FakeClock())
    service = VMService(hv, files, VMCache(), node_name="n", virt_type="qemu", clock=hv.clock)
    hv.subscribe(service)
    spec = vm(Volume("token", ConfigVolume(ConfigKind.SECRET, "token")))
    service.apply(spec)
    service.start("team-a", "web")
    service.stop("team-a", "web", grace_period=0)
    write(secrets, "team-a/token/token", b"rotated")

    service.start("team-a", "web")

    [domain] = hv.list_domains()
    served = [iso.written[path] for path in iso.written if path in domain.config_xml]
    assert served == [{"token": b"rotated"}]
