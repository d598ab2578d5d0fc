"""deploy/: every manifest is valid Kubernetes, passes only real flags, mounts what the agent
uses, and the Containerfile names only things that exist."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from agent.api.authzfile import load_policy
from agent.config import Settings, load_settings
from agent.config.flags import parser

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
KUBERNETES = "1.33.0"  # schemas shipped with kubernetes-validate: no network needed
# Kinds of CRDs (Prometheus operator, KubeVirt's VMs in examples/): Kubernetes has no schema.
CUSTOM_KINDS = {
    "monitoring.coreos.com/v1": {"ServiceMonitor", "PrometheusRule"},
    "kubevirt.io/v1": {"VirtualMachine", "VirtualMachineInstance"},
}


def documents(pattern: str = "daemonset.yaml") -> list[dict[str, Any]]:
    """Every Kubernetes object in the matching files (monitoring/ holds Prometheus files too)."""
    found = []
    for path in sorted(DEPLOY.glob(pattern)):
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and "apiVersion" in doc and "kind" in doc:
                found.append(doc)
    return found


def one(kind: str) -> dict[str, Any]:
    found = [doc for doc in documents() if doc["kind"] == kind]
    assert len(found) == 1, kind
    return found[0]


def help_text() -> str:
    return parser().format_help()


MANIFESTS = [
    doc
    for doc in documents("**/*.yaml")
    if doc["kind"] not in CUSTOM_KINDS.get(doc["apiVersion"], set())
]


@pytest.mark.parametrize(
    "doc", MANIFESTS, ids=lambda d: f"{d['kind']}/{d['metadata']['name']}"
)  # fmt: skip
def test_every_manifest_is_valid_against_the_kubernetes_schemas(doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, KUBERNETES, strict=True)


def test_a_manifest_with_an_unknown_field_is_refused() -> None:
    """The validation above can fail: a misspelt field is an error, not ignored."""
    broken = one("DaemonSet")
    broken["spec"]["template"]["spec"]["hostNetwrok"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES, strict=True)


def test_no_role_is_granted_to_the_agent() -> None:
    kinds = {doc["kind"] for doc in documents("**/*.yaml")}
    assert not kinds & {"Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding"}
    account = one("ServiceAccount")
    assert account["automountServiceAccountToken"] is False


def _container() -> dict[str, Any]:
    pod = one("DaemonSet")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == one("ServiceAccount")["metadata"]["name"]
    container: dict[str, Any] = pod["containers"][0]
    return container


def _config(tmp_path: Path) -> Settings:
    path = tmp_path / "config.yaml"
    path.write_text(one("ConfigMap")["data"]["config.yaml"])
    return load_settings(["--config", str(path)], environ={})


def test_every_flag_and_setting_the_manifests_pass_is_in_virt_agent_help(tmp_path: Path) -> None:
    text = help_text()
    args = _container()["args"]
    flags = [arg.split("=")[0] for arg in args if arg.startswith("--")]
    keys = yaml.safe_load(one("ConfigMap")["data"]["config.yaml"])
    env = [e["name"] for e in _container()["env"]]
    named = flags + [f"--{key}" for key in keys]
    named += ["--" + name.removeprefix("VIRT_AGENT_").lower().replace("_", "-") for name in env]
    missing = [flag for flag in named if not re.search(rf"{re.escape(flag)}\b", text)]
    assert not missing, missing
    _config(tmp_path)  # and the values are valid settings


def _mounts() -> dict[str, dict[str, Any]]:
    """Each mount path → the volume it mounts."""
    pod = one("DaemonSet")["spec"]["template"]["spec"]
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    return {m["mountPath"]: volumes[m["name"]] for m in _container()["volumeMounts"]}


def _mount_of(path: str) -> tuple[str, dict[str, Any]]:
    """The deepest mount holding ``path``."""
    holders = [m for m in _mounts() if path == m or path.startswith(m.rstrip("/") + "/")]
    assert holders, f"{path} is on no mount"
    deepest = max(holders, key=len)
    return deepest, _mounts()[deepest]


def test_every_path_the_agent_uses_is_mounted_and_every_mount_is_used(tmp_path: Path) -> None:
    settings = _config(tmp_path)
    used = {
        settings.unix_socket,
        settings.state_dir,
        *settings.image_root,
        *settings.host_disk_root,
        *settings.claim_root,
        settings.image_cache_dir,
        settings.qemu_run_dir,
        "/run/libvirt/libvirt-sock",  # qemu:///system
        "/dev/net/tun",  # taps
        "/etc/virt-agent/config.yaml",  # --config in args
    }
    files = {settings.tls_cert, settings.tls_key, settings.tls_client_ca, settings.authz_config}
    for path in sorted(used | files):
        _mount_of(path)
    for path in files:  # each file is a key of the ConfigMap or Secret that is mounted there
        mount, volume = _mount_of(path)
        key = path[len(mount) + 1 :]
        if "configMap" in volume:
            assert key in one("ConfigMap")["data"], path
        else:
            assert key in one("Secret")["stringData"], path
    for mount in _mounts():
        assert any(p == mount or p.startswith(mount + "/") for p in used | files), mount


def test_the_shipped_authz_rules_load(tmp_path: Path) -> None:
    path = tmp_path / "authz.yaml"
    path.write_text(one("ConfigMap")["data"]["authz.yaml"])
    roles = {rule.role.value for rule in load_policy(str(path)).rules}
    assert roles == {"control-plane", "peer", "reader"}


def test_probes_use_the_unix_socket_not_grpc_probes() -> None:
    container = _container()
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert "grpc" not in container[probe]
        assert container[probe]["exec"]["command"] == ["python3", "-m", "agent.healthcheck"]
    assert (ROOT / "agent" / "healthcheck.py").is_file()


# -- the Containerfile ----------------------------------------------------------------------

CONTAINERFILE = (DEPLOY / "Containerfile").read_text()
# Programs the adapters run, and the Debian package that has each.
PROGRAMS = {"qemu-img": "qemu-utils", "nft": "nftables", "conntrack": "conntrack"}


def _instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", CONTAINERFILE)
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split()[0].upper(), line.partition(" ")[2])
        for line in lines
        if line and not line.startswith("#")
    ]


def test_the_containerfile_copies_paths_that_exist() -> None:
    copies = [args.split() for kind, args in _instructions() if kind == "COPY"]
    assert copies
    for *sources, _target in copies:
        for source in sources:
            assert (ROOT / source).exists(), source


def test_the_containerfile_installs_every_program_the_agent_runs() -> None:
    installs = " ".join(args for kind, args in _instructions() if kind == "RUN")
    packages = set(re.findall(r"[a-z0-9][a-z0-9.+-]+", installs.partition("install")[2]))
    for program, package in PROGRAMS.items():
        assert re.search(rf'binary: str = "{program}"', _adapter_sources()), program
        assert package in packages, f"{program} comes from {package}"
    assert "libvirt-dev" in packages or "libvirt0" in packages  # the libvirt client library


def _adapter_sources() -> str:
    return "".join(path.read_text() for path in (ROOT / "agent" / "adapters").glob("*.py"))


def test_the_containerfile_runs_the_agents_entry_point() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    entry = [args for kind, args in _instructions() if kind == "ENTRYPOINT"]
    assert entry and yaml.safe_load(entry[-1])[0] in scripts
    base = next(args for kind, args in _instructions() if kind == "FROM")
    assert base.startswith("debian:")
