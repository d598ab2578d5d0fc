"""A local OCI registry (Debian's docker-registry) inside the world namespace, for tests.

It listens on 192.0.2.1:5000 inside the world netns only (plain HTTP: agents get
``--insecure-registry 192.0.2.1:5000``), keeps its blobs in a folder of its own (removed on
stop), and logs every request, so tests can count blob downloads. Stopped by pid.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

from tests.testbed.nodebox import TestbedError, World

__all__ = ["LocalRegistry"]

_PORT = 5000
_REPO_ROOT = Path(__file__).resolve().parents[2]


class LocalRegistry:
    """docker-registry serving ``address`` (``192.0.2.1:5000``) from ``dir/storage``."""

    def __init__(self, world: World, dir: Path) -> None:
        self.world = world
        self.dir = dir
        self.address = f"{world.ip}:{_PORT}"
        self.storage = dir / "storage"
        self.log_path = dir / "registry.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @classmethod
    def start(cls, world: World, dir: Path, timeout: float = 30.0) -> LocalRegistry:
        registry = cls(world, dir)
        try:
            registry._start(timeout)
        except BaseException:
            registry.stop()
            raise
        return registry

    def _start(self, timeout: float) -> None:
        binary = shutil.which("docker-registry")
        if binary is None:
            raise TestbedError("no docker-registry binary (install it: hack/install-deps.sh)")
        self.storage.mkdir(parents=True)
        config = self.dir / "config.yml"
        # JSON is YAML: no quoting surprises in paths.
        config.write_text(
            json.dumps(
                {
                    "version": 0.1,
                    "log": {"level": "info", "accesslog": {"disabled": False}},
                    "storage": {
                        "filesystem": {"rootdirectory": str(self.storage)},
                        "delete": {"enabled": True},
                    },
                    "http": {"addr": self.address},
                }
            )
        )
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        try:
            self._proc = subprocess.Popen(
                ["ip", "netns", "exec", self.world.netns, binary, "serve", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while True:
            if self._proc.poll() is not None:
                raise TestbedError(f"docker-registry exited: {self.log_tail()}")
            try:
                self.world.http_get(self.world.ip, _PORT, timeout=2, path="/v2/")
                return
            except TestbedError:
                if time.monotonic() > deadline:
                    raise TestbedError(
                        f"docker-registry did not answer: {self.log_tail()}"
                    ) from None
            time.sleep(0.1)

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def push(self, disk: Path, repository: str, tag: str = "latest") -> Path:
        """Build a containerdisk of ``disk`` (hack/build-containerdisk.sh) and push it here;
        returns the OCI layout folder it was built in."""
        argv = [
            "bash", str(_REPO_ROOT / "hack" / "build-containerdisk.sh"), "--disk", str(disk),
            "--push", f"docker://{self.address}/{repository}:{tag}", "--insecure",
        ]  # fmt: skip
        # Run in the world namespace: that is where the registry listens.
        proc = self.world.exec(argv, timeout=300)
        if proc.returncode != 0:
            raise TestbedError(f"pushing {disk} failed: {proc.stderr[-3000:]}")
        return Path(proc.stdout.strip().splitlines()[-1])

    def blob_path(self, digest: str) -> Path:
        """Where the registry keeps a blob's bytes (to tamper with them)."""
        algorithm, _, hex_digest = digest.partition(":")
        return (
            self.storage / "docker" / "registry" / "v2" / "blobs" / algorithm / hex_digest[:2]
            / hex_digest / "data"
        )  # fmt: skip

    def blob_gets(self, repository: str, digest: str) -> int:
        """How many GET requests for the blob the registry has logged (its access log)."""
        needle = f'"GET /v2/{repository}/blobs/{digest} '
        try:
            return self.log_path.read_text(errors="replace").count(needle)
        except OSError:
            return 0

    def stop(self) -> None:
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.terminate()
                try:
                    self._proc.wait(10)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait(5)
            self._proc = None
        shutil.rmtree(self.dir, ignore_errors=True)


def layout_layers(layout: Path) -> list[str]:
    """Digests of the layers of the ``latest`` image of an OCI layout."""
    index = json.loads((layout / "index.json").read_text())
    manifest_digest = index["manifests"][0]["digest"]
    algorithm, _, hex_digest = manifest_digest.partition(":")
    manifest = json.loads((layout / "blobs" / algorithm / hex_digest).read_text())
    return [layer["digest"] for layer in manifest["layers"]]
