"""Daemon settings: each value takes its setting's type, and a wrong one names the setting and
where it came from before the agent starts."""

from __future__ import annotations

import shutil
import sys
import tempfile
import types
from pathlib import Path

import pytest

from agent.__main__ import main
from agent.config import ConfigError, Settings, bridge_networks, check_files, load_settings


def config_file(tmp_path: Path, text: str) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return str(path)


def test_environment_values_take_the_type_of_their_setting() -> None:
    settings = load_settings([], environ={"VIRT_AGENT_SHUTDOWN_GRACE_SECONDS": "10"})
    assert settings.shutdown_grace_seconds == 10.0
    assert isinstance(settings.shutdown_grace_seconds, float)  # grpc's stop() refuses "10"


@pytest.mark.parametrize(
    ("text", "expected"),
    [("true", True), ("1", True), ("Yes", True), ("on", True),
     ("false", False), ("0", False), ("NO", False), ("off", False)],
)  # fmt: skip
def test_booleans_from_the_environment(text: str, expected: bool) -> None:
    assert load_settings([], environ={"VIRT_AGENT_VM_NETWORK": text}).vm_network is expected


def test_config_file_values_take_the_type_of_their_setting(tmp_path: Path) -> None:
    path = config_file(tmp_path, "shutdown-grace-seconds: 5\nvm-network: off\nuplink:\n")
    settings = load_settings(["--config", path], environ={})
    assert settings.shutdown_grace_seconds == 5.0 and settings.vm_network is False
    assert settings.uplink == ""  # a key without a value keeps the default


def test_a_flag_beats_the_environment_which_beats_the_file(tmp_path: Path) -> None:
    path = config_file(tmp_path, "log-level: debug\n")
    env = {"VIRT_AGENT_CONFIG": path, "VIRT_AGENT_LOG_LEVEL": "warning"}
    assert load_settings(["--log-level", "error"], environ=env).log_level == "error"
    assert load_settings([], environ=env).log_level == "warning"
    assert load_settings([], environ={"VIRT_AGENT_CONFIG": path}).log_level == "debug"
    assert load_settings([], environ={}).log_level == "info"


ENV = "VIRT_AGENT_"


@pytest.mark.parametrize(
    ("env", "problem"),
    [
        ({ENV + "VM_NETWORK": "ture"},
         r"^vm-network: 'ture' is not one of true/false/1/0/yes/no/on/off "
         r"\(from VIRT_AGENT_VM_NETWORK\)$"),
        ({ENV + "SHUTDOWN_GRACE_SECONDS": "ten"},
         r"^shutdown-grace-seconds: 'ten' is not a number \(from VIRT_AGENT_SHUTDOWN_GRACE"),
        ({ENV + "SHUTDOWN_GRACE_SECONDS": "-1"}, r"^shutdown-grace-seconds: -1.0 is negative"),
        ({ENV + "SHUTDOWN_GRACE_SECONDS": "inf"}, r"^shutdown-grace-seconds: 'inf' is not a"),
        ({ENV + "LOG_FORMAT": "xml"}, r"^log-format: 'xml' is not one of json, text \(from"),
        ({ENV + "RESERVED_MEMORY": "lots"},
         r"^reserved-memory: 'lots' is not a quantity .* \(from VIRT_AGENT_RESERVED_MEMORY\)$"),
        ({ENV + "DNS": "192.0.2.1,dns.example"},
         r"^dns: 'dns.example' is not an IPv4 address \(from VIRT_AGENT_DNS\)$"),
    ],
    ids=["bool", "float", "negative", "infinite", "choice", "quantity", "list-item"],
)  # fmt: skip
def test_bad_environment_values_name_the_setting_and_the_variable(
    env: dict[str, str], problem: str
) -> None:
    with pytest.raises(ConfigError, match=problem):
        load_settings([], environ=env)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("log-level: verbose\n", r"^log-level: 'verbose' is not one of debug, info, warning, "),
        ("reserved-memory: lots\n", r"^reserved-memory: 'lots' is not a quantity"),
        ("reserved-memory: 1073741824\n", r"^reserved-memory: 1073741824 is not text"),
        ("vm-network: maybe\n", r"^vm-network: 'maybe' is not one of true/false"),
        ("shutdown-grace-seconds: [1]\n", r"^shutdown-grace-seconds: \[1\] is not a number"),
        ("dns: {a: b}\n", r"^dns: \{'a': 'b'\} is not a list of text"),
        ("image-root: [1, 2]\n", r"^image-root: \[1, 2\] is not a list of text"),
    ],
    ids=["choice", "quantity", "yaml-int-for-text", "bool", "float", "list", "list-items"],
)
def test_bad_config_file_values_name_the_setting_and_the_file(
    tmp_path: Path, text: str, problem: str
) -> None:
    path = config_file(tmp_path, text)
    with pytest.raises(ConfigError, match=problem) as caught:
        load_settings(["--config", path], environ={})
    assert str(caught.value).endswith(f"(from config file {path})")


def test_bad_flag_values_name_the_flag() -> None:
    with pytest.raises(
        ConfigError, match=r"^reserved-memory: 'lots' .* \(from --reserved-memory\)$"
    ):
        load_settings(["--reserved-memory", "lots"], environ={})


@pytest.mark.parametrize(
    "setting", ["tls-cert", "tls-key", "tls-client-ca", "registry-ca", "registry-config"]
)
def test_files_named_by_settings_must_be_readable(tmp_path: Path, setting: str) -> None:
    good = tmp_path / "good.pem"
    good.write_text("x")
    pair = {"tls-cert": "tls-key", "tls-key": "tls-cert"}  # given together or not at all
    argv = [f"--{pair[setting]}", str(good)] if setting in pair else []
    for bad, problem in ((tmp_path / "missing", "No such file or directory"),
                         (tmp_path, "Is a directory")):  # fmt: skip
        settings = load_settings([*argv, f"--{setting}", str(bad)], environ={})
        with pytest.raises(ConfigError) as caught:
            check_files(settings)
        assert str(caught.value) == f"{setting}: cannot read {bad}: {problem}"


def test_registry_credentials_must_parse(tmp_path: Path) -> None:
    bad = tmp_path / "config.json"
    bad.write_text("{not json")
    settings = load_settings(["--registry-config", str(bad)], environ={})
    with pytest.raises(ConfigError, match=f"^registry-config: {bad}: "):
        check_files(settings)
    bad.write_text('{"auths": {}}')
    check_files(load_settings(["--registry-config", str(bad)], environ={}))


def test_the_daemon_exits_2_naming_the_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def run(settings: Settings) -> int:
        raise AssertionError("the agent started with a wrong setting")

    # A stand-in for agent.app: should the setting be accepted, nothing starts on this machine.
    app = types.ModuleType("agent.app")
    app.run = run  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "agent.app", app)
    monkeypatch.setenv("VIRT_AGENT_VM_NETWORK", "ture")
    assert main([]) == 2
    assert capsys.readouterr().err == (
        "virt-agent: vm-network: 'ture' is not one of true/false/1/0/yes/no/on/off "
        "(from VIRT_AGENT_VM_NETWORK)\n"
    )
    monkeypatch.delenv("VIRT_AGENT_VM_NETWORK")
    missing = tmp_path / "ca.pem"
    assert main(["--registry-ca", str(missing)]) == 2
    assert capsys.readouterr().err == (
        f"virt-agent: registry-ca: cannot read {missing}: No such file or directory\n"
    )


def test_metrics_are_off_by_default_and_plain_http_needs_consent() -> None:
    assert load_settings([], environ={}).metrics_listen == ""
    with pytest.raises(ConfigError, match="metrics-listen: serving metrics needs --tls-cert"):
        load_settings(["--metrics-listen", "0.0.0.0:8443"], environ={})
    plain = load_settings(["--metrics-listen", "127.0.0.1:9464", "--metrics-insecure"], environ={})
    assert plain.metrics_listen == "127.0.0.1:9464" and plain.metrics_insecure
    with pytest.raises(ConfigError, match=r"metrics-listen: '9464' is not host:port"):
        load_settings(["--metrics-listen", "9464", "--metrics-insecure"], environ={})
    from_env = load_settings(
        [], environ={"VIRT_AGENT_METRICS_LISTEN": "[::]:8443", "VIRT_AGENT_METRICS_INSECURE": "1"}
    )
    assert from_env.metrics_listen == "[::]:8443"


def test_bridge_networks_are_name_equals_bridge_pairs() -> None:
    settings = load_settings(
        ["--bridge-network", "lan=br0", "--bridge-network", "dmz=br-dmz"], environ={}
    )
    assert bridge_networks(settings) == (("lan", "br0"), ("dmz", "br-dmz"))
    assert bridge_networks(load_settings([], environ={})) == ()  # none: bridge binding is refused
    for bad, problem in [
        ("br0", "is not NAME=BRIDGE"),
        ("lan=", "is not NAME=BRIDGE"),
        ("lan=a-bridge-name-too-long", "longer than an interface name"),
    ]:
        with pytest.raises(ConfigError, match=f"^bridge-network: .*{problem}"):
            load_settings(["--bridge-network", bad], environ={})
    with pytest.raises(ConfigError, match="bridge-network: 'lan' is given twice"):
        load_settings(["--bridge-network", "lan=br0", "--bridge-network", "lan=br1"], environ={})


def test_container_disk_limits_have_defaults_and_are_checked() -> None:
    settings = load_settings([], environ={})
    assert (settings.max_image_size, settings.max_image_ratio) == (64 * 1024**3, 1100)
    with pytest.raises(ConfigError, match="^max-image-ratio: -1 is negative"):
        load_settings(["--max-image-ratio", "-1"], environ={})
    with pytest.raises(ConfigError, match="^max-image-size: 'huge'"):
        load_settings(["--max-image-size", "huge"], environ={})


def test_a_state_dir_qemu_cannot_traverse_is_refused_at_start(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    app = types.ModuleType("agent.app")
    app.run = lambda settings: 0  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "agent.app", app)
    top = Path(tempfile.mkdtemp(dir="/tmp", prefix="va-state-"))  # /tmp: world-traversable
    try:
        top.chmod(0o755)
        private = top / "private"
        private.mkdir(mode=0o700)
        state = private / "state"
        # "nobody" stands in for QEMU's user (libvirt-qemu by default).
        assert main(["--state-dir", str(state), "--qemu-user", "nobody"]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"virt-agent: state-dir: QEMU's user nobody cannot reach {state}")
        assert f"{private} is drwx------" in err
        private.chmod(0o711)  # traversable is enough
        assert main(["--state-dir", str(state), "--qemu-user", "nobody"]) == 0
        assert main(["--state-dir", str(state), "--qemu-user", "root"]) == 0
    finally:
        shutil.rmtree(top)


def test_the_backpressure_limits_are_operator_settings() -> None:
    settings = load_settings(
        ["--max-watch-streams", "3", "--max-mutating-calls", "5", "--max-calls", "40"], {}
    )
    assert (settings.max_watch_streams, settings.max_mutating_calls, settings.max_calls) == (
        3,
        5,
        40,
    )
    with pytest.raises(ConfigError, match="max-calls: 0 is not 1 or more"):
        load_settings(["--max-calls", "0"], {})
