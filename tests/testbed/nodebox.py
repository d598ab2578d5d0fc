"""Nodes in a box: private libvirtd "nodes" on a private "world" network, for system tests.

Layout (all inside network namespaces this module creates; the root namespace is never
changed, and no traffic leaves 127.0.0.0/8 and these namespaces)::

    netns va<id>-world              netns va<id>-a                 netns va<id>-b
    wbr0 192.0.2.1/24  <--veth-->   uplink0 192.0.2.11/24          uplink0 192.0.2.12/24
    HTTP server :80    <--veth------------------------------------>
    (answers "client=<source ip>")  default via 192.0.2.1          default via 192.0.2.1
                                    ip_forward=1                   ip_forward=1
                                    own mount ns: private /run,    (same)
                                    /etc/libvirt, /var/lib/libvirt,
                                    /var/cache/libvirt, /var/log/libvirt;
                                    virtlogd + libvirtd --listen

192.0.2.0/24 is TEST-NET-1 (documentation range); it only exists inside these namespaces.

Each node keeps a "keeper" process (`sleep infinity`) that holds its mount namespace, so the
daemons can be restarted and `exec`/`spawn` can always `nsenter` it. Because the node's
`/run` is a bind mount of `<node dir>/run`, its libvirt socket is reachable from the root
mount namespace: `NodeBox.libvirt_uri` is `qemu:///system?socket=<node dir>/run/libvirt/
libvirt-sock`, usable by libvirt-python in the test process. Paths outside the five private
folders (e.g. `/tmp/...`, `/var/cache/virt-agent/...`) are the same inside and outside.

Teardown is by pid only: processes this module started (tracked pids) and processes whose
network namespace is one this module created (QEMU is daemonized by libvirt, so it is not a
child of libvirtd; it does live in the node's network namespace). Every wait is bounded, then
SIGKILL. Setup failures tear down what was built so far.

Command line (used by `hack/nodebox.sh`)::

    python -m tests.testbed.nodebox up --dir DIR [--two]
    python -m tests.testbed.nodebox down --dir DIR

Only the standard library is used here (no pytest, no libvirt-python).
"""

from __future__ import annotations

import argparse
import contextlib
import grp
import json
import os
import secrets
import select
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

__all__ = [
    "CREATED_NETNS",
    "GuestImage",
    "NodeBox",
    "TestbedError",
    "TwoNodes",
    "World",
    "build_test_guest",
    "leaked_netns",
    "requirements_missing",
]

WORLD_BRIDGE = "wbr0"
WORLD_IP = "192.0.2.1"
WORLD_PREFIX = 24
WORLD_HTTP_PORT = 80
UPLINK = "uplink0"
NODE_IP_BASE = 10  # node with index i gets 192.0.2.(10+i)
NETNS_PREFIX = "va"

# Names of every network namespace this process created (whether or not deleted since):
# `leaked_netns()` compares it with `ip netns list` for the end-of-session leak check.
CREATED_NETNS: set[str] = set()

_DAEMON_STOP_TIMEOUT = 10.0
_KILL_TIMEOUT = 5.0
_CMD_TIMEOUT = 60.0
_UNIX_PATH_MAX = 107
_DEFAULT_CACHE = "/var/cache/virt-agent/testbed"  # sun_path is 108 bytes including the NUL

_REQUIRED_BINARIES = (
    "ip",
    "nft",
    "libvirtd",
    "virtlogd",
    "virsh",
    "qemu-system-x86_64",
    "unshare",
    "nsenter",
    "sysctl",
    "mount",
    "taskset",
)
_SBIN_PATH = ("/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/local/bin", "/usr/bin", "/bin")

# The world's HTTP server: answers every GET with who asked (to check masquerading).
_HTTP_SERVER = r"""
import http.server, sys

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = ("world\nclient=%s\npath=%s\n" % (self.client_address[0], self.path)).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):
        sys.stderr.write("%s %s\n" % (self.client_address[0], fmt % args))
        sys.stderr.flush()

http.server.ThreadingHTTPServer((sys.argv[1], int(sys.argv[2])), Handler).serve_forever()
"""

# Fetch a URL without any proxy from the environment (traffic must stay in our namespaces).
_HTTP_GET = r"""
import sys, urllib.request
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
with opener.open(sys.argv[1], timeout=float(sys.argv[2])) as r:
    sys.stdout.write(r.read().decode("utf-8", "replace"))
"""

# Runs in the node's new mount namespace (inside its network namespace): private mounts,
# a marker file, then becomes the keeper process that holds the namespace.
_NODE_INIT = r"""
set -eu
node_dir=$1
mount --bind "$node_dir/run" /run
mount --bind "$node_dir/lib" /var/lib/libvirt
mount --bind "$node_dir/cache" /var/cache/libvirt
mount --bind "$node_dir/log" /var/log/libvirt
mount --bind "$node_dir/etc" /etc/libvirt
if [ -c "$node_dir/dev-kvm" ]; then mount --bind "$node_dir/dev-kvm" /dev/kvm; fi
echo "$$" > /run/nodebox-keeper.pid
exec sleep infinity
"""


# Runs a daemonizing command (libvirtd -d) as the child subreaper of what it leaves: the
# daemon, and the QEMUs libvirtd daemonizes, are reaped the moment they exit, as systemd does
# on a real node. (This machine's init reaps orphans only every ~2 s, and libvirt reports a
# QEMU's death only once the process is reaped: a killed guest looked Failed 2 s late.)
# Prints the command's exit code, then reaps until nothing of its own is left.
_REAPER = r"""
import ctypes, os, subprocess, sys
ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
print(subprocess.call(sys.argv[1:]), flush=True)
os.close(1)
while True:
    try:
        os.wait()
    except ChildProcessError:
        break
"""


class TestbedError(RuntimeError):
    """The test bed could not be built or torn down; the message says what and why."""

    __test__ = False  # not a pytest test class


def requirements_missing() -> list[str]:
    """Human-readable reasons why nodes in a box cannot run here ([] when all is present)."""
    reasons: list[str] = []
    if os.geteuid() != 0:
        reasons.append(f"must run as root (euid is {os.geteuid()})")
    search = os.pathsep.join([os.environ.get("PATH", ""), *_SBIN_PATH])
    for binary in _REQUIRED_BINARIES:
        if shutil.which(binary, path=search) is None:
            reasons.append(f"no `{binary}` binary (install it: hack/install-deps.sh)")
    if not os.path.exists("/dev/net/tun"):
        reasons.append("no /dev/net/tun (tun/tap devices are unavailable)")
    if sys.platform != "linux":
        reasons.append(f"needs Linux, this is {sys.platform}")
    return reasons


def leaked_netns() -> list[str]:
    """Network namespaces created by this process that still exist."""
    return sorted(CREATED_NETNS & set(_netns_list()))


# --------------------------------------------------------------------------- helpers


def _env() -> dict[str, str]:
    env = dict(os.environ)
    path = env.get("PATH", "")
    extra = [p for p in _SBIN_PATH if p not in path.split(os.pathsep)]
    env["PATH"] = os.pathsep.join([path, *extra]) if path else os.pathsep.join(extra)
    env["LC_ALL"] = "C"
    return env


def _run(
    argv: Sequence[str], *, check: bool = True, timeout: float = _CMD_TIMEOUT, **kw: Any
) -> subprocess.CompletedProcess[str]:
    """Run a command, capture its output as text; on failure raise TestbedError with stderr."""
    kw.setdefault("env", _env())
    kw.setdefault("stdin", subprocess.DEVNULL)
    try:
        proc = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=timeout, check=False, **kw
        )
    except subprocess.TimeoutExpired as exc:
        raise TestbedError(f"`{_fmt(argv)}` timed out after {timeout} s") from exc
    if check and proc.returncode != 0:
        raise TestbedError(
            f"`{_fmt(argv)}` failed with exit code {proc.returncode}: "
            f"{(proc.stderr or proc.stdout).strip()}"
        )
    return proc


def _fmt(argv: Sequence[str]) -> str:
    return " ".join(argv)


def _netns_list() -> list[str]:
    proc = _run(["ip", "netns", "list"], check=False)
    return [line.split()[0] for line in proc.stdout.splitlines() if line.strip()]


def _netns_add(name: str) -> int:
    """Create a network namespace with lo up; return its inode number."""
    _run(["ip", "netns", "add", name])
    CREATED_NETNS.add(name)
    _run(["ip", "-n", name, "link", "set", "lo", "up"])
    return os.stat(f"/run/netns/{name}").st_ino


def _netns_del(name: str) -> None:
    if name in _netns_list():
        _run(["ip", "netns", "del", name])


def _netns_of(pid: int) -> int | None:
    try:
        link = os.readlink(f"/proc/{pid}/ns/net")
    except OSError:
        return None
    # "net:[4026532281]"
    return int(link[link.index("[") + 1 : -1])


def _pids_in_netns(inode: int) -> list[int]:
    me = os.getpid()
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != me and _netns_of(int(entry)) == inode:
            pids.append(int(entry))
    return pids


def _pid_alive(pid: int) -> bool:
    """True if `pid` exists and is not a zombie."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    state = text[text.rindex(")") + 2 :].split()[0]
    return state not in ("Z", "X")


def _comm(pid: int) -> str:
    """The process's command name ("" if it is gone or a zombie)."""
    if not _pid_alive(pid):
        return ""
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _wait_pids_gone(pids: Sequence[int], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    alive = [p for p in pids if _pid_alive(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = [p for p in alive if _pid_alive(p)]
    return alive


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _stop_pids(
    pids: Sequence[int], timeout: float = _DAEMON_STOP_TIMEOUT, sig: int = signal.SIGTERM
) -> list[int]:
    """Send `sig`, wait up to `timeout`, then SIGKILL; return pids that still would not die."""
    alive = [p for p in pids if _pid_alive(p)]
    for pid in alive:
        _signal(pid, sig)
    alive = _wait_pids_gone(alive, timeout)
    for pid in alive:
        _signal(pid, signal.SIGKILL)
    return _wait_pids_gone(alive, _KILL_TIMEOUT)


def _reap(proc: subprocess.Popen[Any] | None, timeout: float = _KILL_TIMEOUT) -> None:
    """Stop (if needed) and reap a Popen of ours so that no zombie or ResourceWarning remains."""
    if proc is None:
        return
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


def _read_pidfile(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"({path} unreadable)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty)"


def _set_conf(path: Path, settings: dict[str, str | int]) -> None:
    """Set keys in a libvirt-style `key = value` file: drop active lines for them, append ours."""
    lines = path.read_text().splitlines() if path.exists() else []
    kept = [
        line
        for line in lines
        if not any(line.replace(" ", "").startswith(f"{k}=") for k in settings)
    ]
    kept.append("")
    kept.append("# --- set by tests/testbed/nodebox.py ---")
    for key, value in settings.items():
        kept.append(f'{key} = "{value}"' if isinstance(value, str) else f"{key} = {value}")
    path.write_text("\n".join(kept) + "\n")


# --------------------------------------------------------------------------- world


class World:
    """The "outside network": netns `va<id>-world` with bridge `wbr0` at 192.0.2.1/24.

    Runs an HTTP server on 192.0.2.1:80 whose body contains `client=<source ip>`. Nodes plug
    their uplinks into `wbr0`. Use `World.start()`; stop with `stop()` or a `with` block.
    """

    def __init__(self, world_id: str, dir: Path, owns_dir: bool) -> None:
        self.id = world_id
        self.netns = f"{NETNS_PREFIX}{world_id}-world"
        self.bridge = WORLD_BRIDGE
        self.ip = WORLD_IP
        self.prefix = WORLD_PREFIX
        self.http_port = WORLD_HTTP_PORT
        self.dir = dir
        self.owns_dir = owns_dir
        self.netns_inode: int | None = None
        self.http_pid: int | None = None
        self._http: subprocess.Popen[bytes] | None = None
        self.nodes: list[NodeBox] = []

    @property
    def http_url(self) -> str:
        return f"http://{self.ip}:{self.http_port}/"

    @classmethod
    def start(cls, base_dir: str | Path | None = None, world_id: str | None = None) -> World:
        """Create the world namespace, bridge and HTTP server.

        `base_dir` is where this world and its nodes keep files (default: a new temporary
        folder, removed by `stop()`); it must be short, as node socket paths live below it.
        """
        world_id = world_id or secrets.token_hex(3)
        if base_dir is None:
            dir, owns = Path(tempfile.mkdtemp(prefix=f"va{world_id}-")), True
        else:
            dir = Path(base_dir).absolute()
            owns = not dir.exists()
            dir.mkdir(parents=True, exist_ok=True)
        dir.chmod(0o755)  # QEMU (libvirt-qemu) must be able to traverse to node folders
        world = cls(world_id, dir, owns)
        try:
            world._setup()
        except BaseException:
            world._teardown_after_failure()
            raise
        return world

    def _setup(self) -> None:
        self.netns_inode = _netns_add(self.netns)
        ns = ["ip", "-n", self.netns]
        _run([*ns, "link", "add", self.bridge, "type", "bridge"])
        _run([*ns, "addr", "add", f"{self.ip}/{self.prefix}", "dev", self.bridge])
        _run([*ns, "link", "set", self.bridge, "up"])
        log = open(self.dir / "world-http.log", "ab")  # noqa: SIM115 - handed to the child
        try:
            self._http = subprocess.Popen(
                [
                    "ip",
                    "netns",
                    "exec",
                    self.netns,
                    sys.executable,
                    "-c",
                    _HTTP_SERVER,
                    self.ip,
                    str(self.http_port),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=_env(),
                start_new_session=True,
            )
        finally:
            log.close()
        self.http_pid = self._http.pid
        deadline = time.monotonic() + 15
        while True:
            if self._http.poll() is not None:
                raise TestbedError(
                    f"world HTTP server exited with {self._http.returncode}: "
                    f"{_tail(self.dir / 'world-http.log')}"
                )
            try:
                if "client=" in self.http_get(self.ip, self.http_port, timeout=2):
                    break
            except TestbedError:
                if time.monotonic() > deadline:
                    raise
            time.sleep(0.1)

    def exec(self, argv: Sequence[str], **kw: Any) -> subprocess.CompletedProcess[Any]:
        """Run `argv` in the world netns (`subprocess.run` semantics: check defaults to False).

        Defaults: text output captured, 60 s timeout, stdin from /dev/null.
        """
        return _run_in(["ip", "netns", "exec", self.netns], argv, kw)

    def http_get(self, host: str, port: int = 80, timeout: float = 5.0, path: str = "/") -> str:
        """GET http://host:port/path from inside the world netns; return the body text.

        Raises TestbedError (with the client's error) on any failure, including timeouts.
        """
        netloc = f"[{host}]" if ":" in host else host
        url = f"http://{netloc}:{port}{path}"
        argv = ["ip", "netns", "exec", self.netns, sys.executable, "-c", _HTTP_GET, url]
        proc = _run([*argv, str(timeout)], check=False, timeout=timeout + 15)
        if proc.returncode != 0:
            err = proc.stderr.strip().splitlines()
            raise TestbedError(f"GET {url} from {self.netns} failed: {err[-1] if err else '?'}")
        return proc.stdout

    def stop(self) -> None:
        """Stop the nodes still attached, the HTTP server and anything in the world netns;
        delete the netns and (if created by `start`) the base folder. Idempotent."""
        errors: list[str] = []
        for node in list(reversed(self.nodes)):
            try:
                node.stop()
            except Exception as exc:
                errors.append(f"{node.name}: {exc}")
        self._stop_world(errors)
        if errors:
            raise TestbedError("world teardown: " + "; ".join(errors))

    def _stop_world(self, errors: list[str]) -> None:
        if self.http_pid is not None and (
            self.netns_inode is None or _netns_of(self.http_pid) == self.netns_inode
        ):
            stuck = _stop_pids([self.http_pid], _KILL_TIMEOUT)
            if stuck:
                errors.append(f"HTTP server pid {stuck} would not die")
        _reap(self._http)
        if self.netns_inode is not None:
            stuck = _stop_pids(_pids_in_netns(self.netns_inode), _KILL_TIMEOUT)
            if stuck:
                errors.append(f"pids {stuck} in {self.netns} would not die")
        try:
            _netns_del(self.netns)
        except TestbedError as exc:
            errors.append(str(exc))
        if not _keep_dirs():
            if self.owns_dir:
                shutil.rmtree(self.dir, ignore_errors=True)
            else:
                (self.dir / "world-http.log").unlink(missing_ok=True)

    def _teardown_after_failure(self) -> None:
        errors: list[str] = []
        self._stop_world(errors)
        for err in errors:
            print(f"nodebox: while cleaning up a failed world: {err}", file=sys.stderr)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def state(self) -> dict[str, Any]:
        """What `down` needs to stop this world from another process (pids, names, dirs)."""
        return {
            "id": self.id,
            "dir": str(self.dir),
            "owns_dir": self.owns_dir,
            "netns_inode": self.netns_inode,
            "http_pid": self.http_pid,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> World:
        world = cls(state["id"], Path(state["dir"]), bool(state["owns_dir"]))
        world.netns_inode = state.get("netns_inode")
        world.http_pid = state.get("http_pid")
        return world


def _mirror_dirs(src: Path, dest: Path, depth: int = 2) -> None:
    """Create `dest` and the folders below `src` (down to `depth`) with src's mode/owner."""
    dest.mkdir(mode=0o755, exist_ok=True)
    if src.is_dir():
        st = src.stat()
        os.chown(dest, st.st_uid, st.st_gid)
        dest.chmod(stat.S_IMODE(st.st_mode))
        if depth > 0:
            for child in src.iterdir():
                if child.is_dir() and not child.is_symlink():
                    _mirror_dirs(child, dest / child.name, depth - 1)


def _make_kvm_node(path: Path) -> None:
    """A /dev/kvm for the box with the permissions udev gives it on a normal Debian host.

    Here /dev/kvm is root-only (0600: no udev rule ran), so libvirt, which checks access as
    the QEMU user (libvirt-qemu, group kvm), finds KVM "not usable now" although its probe
    saw it: it then discards its QEMU capabilities cache on every start and probes all QEMU
    binaries again (about 12 s per node). The box bind-mounts this node (root:kvm 0660, same
    device numbers) over /dev/kvm in its own mount namespace; the host's node is untouched.
    Domains must still use type='qemu': KVM guests hang on this machine.
    """
    try:
        st = os.stat("/dev/kvm")
        kvm_gid = grp.getgrnam("kvm").gr_gid
    except (OSError, KeyError):
        return
    if not stat.S_ISCHR(st.st_mode):
        return
    os.mknod(path, stat.S_IFCHR | 0o660, st.st_rdev)
    os.chown(path, 0, kvm_gid)
    path.chmod(0o660)


def _unpin(pid: int, cpus: Sequence[int]) -> None:
    """Give all threads of `pid` (started pinned to one CPU) all of `cpus` again.

    libvirt's QEMU capabilities cache records the host's CPUID as seen by libvirtd at start,
    and a libvirtd that started on another core of this machine sees different CPUID data
    ("host cpuid changed"), discards the cache and probes QEMU again (about 8 s). Starting
    libvirtd on the same CPU every time keeps the shared cache valid; its threads (and so the
    QEMU processes it starts later) then get every CPU back.
    """
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            os.sched_setaffinity(int(task.name), cpus)


def _caps_cache() -> Path:
    return Path(os.environ.get("VIRT_AGENT_TESTBED_CACHE", _DEFAULT_CACHE)) / "qemu-capabilities"


def _seed_qemu_caps(dest: Path) -> None:
    """Give a new node the QEMU capabilities that an earlier node probed.

    A fresh libvirtd probes every QEMU binary (x86_64 and i386: about 8 s here) before it
    answers. The cache is valid for any libvirtd on this host (libvirt itself checks the
    binaries' and its own ctime, the kernel, /dev/kvm access and the host CPUID, and probes
    again when stale): see _make_kvm_node() and _unpin() for the two traps on this machine.
    The folder is VIRT_AGENT_TESTBED_CACHE (default /var/cache/virt-agent/testbed).
    """
    src = _caps_cache()
    if not src.is_dir():
        return
    dest.mkdir(parents=True, exist_ok=True)
    for f in src.glob("*.xml"):
        shutil.copy2(f, dest / f.name)


def _save_qemu_caps(src: Path) -> None:
    """Keep the node's probed QEMU capabilities for the next nodes (atomic per file)."""
    dest = _caps_cache()
    try:
        dest.mkdir(parents=True, exist_ok=True)
        for f in src.glob("*.xml"):
            target = dest / f.name
            if target.exists() and target.stat().st_mtime >= f.stat().st_mtime:
                continue
            tmp = dest / f".{f.name}.{os.getpid()}.tmp"
            shutil.copy2(f, tmp)
            tmp.replace(target)
    except OSError as exc:  # only a speed-up: never fail a node for it
        print(f"nodebox: cannot save QEMU capabilities cache: {exc}", file=sys.stderr)


def _keep_dirs() -> bool:
    """VIRT_AGENT_TESTBED_KEEP=1 keeps node folders (logs, configs) after teardown."""
    return os.environ.get("VIRT_AGENT_TESTBED_KEEP", "") not in ("", "0")


def _run_in(
    prefix: list[str], argv: Sequence[str], kw: dict[str, Any]
) -> subprocess.CompletedProcess[Any]:
    if "stdout" not in kw and "stderr" not in kw:
        kw.setdefault("capture_output", True)
    kw.setdefault("text", True)
    kw.setdefault("timeout", _CMD_TIMEOUT)
    kw.setdefault("env", _env())
    if "input" not in kw:
        kw.setdefault("stdin", subprocess.DEVNULL)
    return subprocess.run([*prefix, *argv], **kw)


# --------------------------------------------------------------------------- node


class NodeBox:
    """One node: its own network namespace, mount namespace, virtlogd and libvirtd.

    Attributes: `name`, `index`, `netns`, `uplink` ("uplink0"), `uplink_ip` (192.0.2.(10+index)),
    `gateway` (192.0.2.1), `dir` (this node's folder), `libvirt_uri` (reachable from the root
    namespace), `tcp_uri` (`qemu+tcp://<uplink_ip>/system`, reachable from other nodes),
    `keeper_pid`, `libvirtd_pid`, `virtlogd_pid`, `host_uuid`.
    """

    def __init__(
        self, world: World, name: str, index: int, dir: Path, host_uuid: str | None = None
    ) -> None:
        if not 1 <= index <= 200:
            raise ValueError(f"node index {index} out of range 1..200")
        short = name.removeprefix("node-")[:5] or str(index)
        self.world = world
        self.name = name
        self.index = index
        self.netns = f"{NETNS_PREFIX}{world.id}-{short}"
        self.uplink = UPLINK
        self.peer = f"to-{short}"  # world-side end of the uplink veth, on wbr0
        self.uplink_ip = f"192.0.2.{NODE_IP_BASE + index}"
        self.prefix = WORLD_PREFIX
        self.gateway = world.ip
        self.dir = dir
        self.host_uuid = host_uuid or str(uuid.uuid4())
        self.socket_path = dir / "run" / "libvirt" / "libvirt-sock"
        self.libvirt_uri = f"qemu:///system?socket={self.socket_path}"
        self.tcp_uri = f"qemu+tcp://{self.uplink_ip}/system"
        self.netns_inode: int | None = None
        self.keeper_pid: int | None = None
        self.virtlogd_pid: int | None = None
        self.libvirtd_pid: int | None = None
        self._keeper: subprocess.Popen[bytes] | None = None
        self._spawned: list[subprocess.Popen[Any]] = []
        self._reapers: list[subprocess.Popen[Any]] = []
        self._stopped = False

    # ---- construction

    @classmethod
    def start(
        cls,
        world: World,
        name: str = "node-a",
        index: int = 1,
        base_dir: str | Path | None = None,
        *,
        libvirtd_timeout: float = 30.0,
    ) -> NodeBox:
        """Build the node and wait (up to `libvirtd_timeout`) until its libvirtd answers.

        Files go to `base_dir/<name>` (default base: the world's folder). On any failure
        everything built so far is torn down and the error is raised.
        """
        base = Path(base_dir).absolute() if base_dir is not None else world.dir
        node = cls(world, name, index, base / name)
        if len(str(node.socket_path)) > _UNIX_PATH_MAX - 4:  # room for "-ro"/"-admin"
            raise TestbedError(f"base dir too long for a unix socket path: {node.socket_path}")
        if node.dir.exists():
            raise TestbedError(f"{node.dir} already exists (another node of that name?)")
        try:
            node._setup(libvirtd_timeout)
        except BaseException:
            node._teardown_after_failure()
            raise
        world.nodes.append(node)
        return node

    def _setup(self, libvirtd_timeout: float) -> None:
        self._make_dirs()
        self._make_network()
        self._start_keeper()
        self.start_daemons(libvirtd_timeout)

    def _make_dirs(self) -> None:
        self.dir.mkdir(parents=True)
        self.dir.chmod(0o755)
        (self.dir / "run").mkdir(mode=0o755)
        # The folder skeleton the Debian packages install (e.g. /var/log/libvirt/qemu, which
        # libvirtd does not create itself), with the host's modes and owners; no files.
        for sub, host in (
            ("lib", "/var/lib/libvirt"),
            ("cache", "/var/cache/libvirt"),
            ("log", "/var/log/libvirt"),
        ):
            _mirror_dirs(Path(host), self.dir / sub)
        # /etc/libvirt: the host's files, then our settings.
        shutil.copytree("/etc/libvirt", self.dir / "etc", symlinks=True)
        etc = self.dir / "etc"
        # No autostarted networks or pools: they would add bridges, dnsmasq and firewall
        # rules inside the node that tests did not ask for.
        for autostart in etc.glob("**/autostart"):
            for link in autostart.iterdir():
                link.unlink()
        _set_conf(
            etc / "libvirtd.conf",
            {
                # libvirt refuses to migrate to "the same host": every node its own UUID.
                "host_uuid": self.host_uuid,
                "listen_tls": 0,  # `--listen` would otherwise need TLS certificates
                "listen_tcp": 1,
                "auth_tcp": "none",
                "listen_addr": self.uplink_ip,
                "unix_sock_dir": "/run/libvirt",
                # no polkitd in the box; the socket stays root-only (0700)
                "auth_unix_rw": "none",
                "auth_unix_ro": "none",
                "log_outputs": "3:file:/var/log/libvirt/libvirtd.log",
            },
        )
        _set_conf(
            etc / "qemu.conf",
            {
                # No AppArmor/SELinux confinement in a box: profiles are host-wide and would
                # not know the box's paths; the DAC (uid/gid) model stays as on a real node.
                "security_driver": "none",
                # Don't record original owners in trusted.* xattrs on files that several
                # boxes (and the host) share, such as the test guest's kernel and initrd.
                "remember_owner": 0,
            },
        )
        _seed_qemu_caps(self.dir / "cache" / "qemu" / "capabilities")
        _make_kvm_node(self.dir / "dev-kvm")
        _set_conf(etc / "virtlogd.conf", {"log_outputs": "3:file:/var/log/libvirt/virtlogd.log"})

    def _make_network(self) -> None:
        self.netns_inode = _netns_add(self.netns)
        ns = ["ip", "-n", self.netns]
        # Created inside the node ns, peer moved straight into the world ns: nothing ever
        # appears in the root namespace.
        _run([*ns, "link", "add", self.uplink, "type", "veth", "peer", "name", self.peer,
              "netns", self.world.netns])  # fmt: skip
        _run(["ip", "-n", self.world.netns, "link", "set", self.peer, "master", WORLD_BRIDGE])
        _run(["ip", "-n", self.world.netns, "link", "set", self.peer, "up"])
        _run([*ns, "addr", "add", f"{self.uplink_ip}/{self.prefix}", "dev", self.uplink])
        _run([*ns, "link", "set", self.uplink, "up"])
        _run([*ns, "route", "add", "default", "via", self.gateway])
        _run(["ip", "netns", "exec", self.netns, "sysctl", "-qw", "net.ipv4.ip_forward=1"])

    def _start_keeper(self) -> None:
        log = open(self.dir / "init.log", "ab")  # noqa: SIM115 - handed to the child
        try:
            self._keeper = subprocess.Popen(
                [
                    "ip",
                    "netns",
                    "exec",
                    self.netns,
                    "unshare",
                    "--mount",
                    "--propagation",
                    "private",
                    "sh",
                    "-c",
                    _NODE_INIT,
                    "nodebox-init",
                    str(self.dir),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=_env(),
                cwd="/",
                start_new_session=True,
            )
        finally:
            log.close()
        self.keeper_pid = self._keeper.pid  # ip, unshare and sh all exec: same pid
        pidfile = self.dir / "run" / "nodebox-keeper.pid"
        deadline = time.monotonic() + 15
        while _read_pidfile(pidfile) != self.keeper_pid:
            if self._keeper.poll() is not None:
                raise TestbedError(
                    f"{self.name}: mount namespace setup failed: {_tail(self.dir / 'init.log')}"
                )
            if time.monotonic() > deadline:
                raise TestbedError(f"{self.name}: mount namespace setup timed out")
            time.sleep(0.02)

    def start_daemons(self, timeout: float = 30.0) -> None:
        """Start virtlogd (if not running), then libvirtd; wait until libvirtd answers.

        Also usable after `stop_libvirtd()` to restart libvirtd (e.g. agent reconnect tests).
        """
        run = self.dir / "run"
        if self.virtlogd_pid is None or not _pid_alive(self.virtlogd_pid):
            (run / "virtlogd.pid").unlink(missing_ok=True)
            self.exec(["virtlogd", "-d", "--pid-file", "/run/virtlogd.pid"], check=True)
            self.virtlogd_pid = self._wait_pidfile(run / "virtlogd.pid", "virtlogd")
        (run / "libvirtd.pid").unlink(missing_ok=True)
        # Pinned to one CPU while it starts: see _unpin() for why.
        cpus = sorted(os.sched_getaffinity(0))
        code = self._start_reaped(
            ["taskset", "-c", str(cpus[0]), "libvirtd", "-d", "--listen",
             "--pid-file", "/run/libvirtd.pid"]
        )  # fmt: skip
        if code != 0:
            raise TestbedError(
                f"{self.name}: libvirtd failed to start ({code}): "
                f"{_tail(self.dir / 'log' / 'reaper.log')}\n"
                f"{_tail(self.dir / 'log' / 'libvirtd.log')}"
            )
        self.libvirtd_pid = self._wait_pidfile(run / "libvirtd.pid", "libvirtd")
        deadline = time.monotonic() + timeout
        while True:
            try:
                probe = _run(["virsh", "-c", self.libvirt_uri, "version"], check=False)
            except TestbedError as exc:  # virsh hung: report like a failed probe
                probe = subprocess.CompletedProcess([], 1, "", str(exc))
            if probe.returncode == 0:
                _unpin(self.libvirtd_pid, cpus)
                _save_qemu_caps(self.dir / "cache" / "qemu" / "capabilities")
                return
            if not _pid_alive(self.libvirtd_pid):
                raise TestbedError(
                    f"{self.name}: libvirtd exited: {_tail(self.dir / 'log' / 'libvirtd.log')}"
                )
            if time.monotonic() > deadline:
                raise TestbedError(
                    f"{self.name}: libvirtd did not answer within {timeout} s: "
                    f"{probe.stderr.strip()}\n{_tail(self.dir / 'log' / 'libvirtd.log')}"
                )
            time.sleep(0.1)

    def _start_reaped(self, argv: Sequence[str], timeout: float = 60.0) -> int:
        """Run a daemonizing ``argv`` in the node under a reaper of its own (see _REAPER);
        return its exit code."""
        with open(self.dir / "log" / "reaper.log", "ab") as log:
            reaper = subprocess.Popen(
                [*self._nsenter, sys.executable, "-c", _REAPER, *argv],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log,
                env=_env(),
                cwd="/",
                text=True,
            )
        self._reapers.append(reaper)
        assert reaper.stdout is not None
        ready, _, _ = select.select([reaper.stdout], [], [], timeout)
        line = reaper.stdout.readline() if ready else ""
        reaper.stdout.close()
        if not line.strip().lstrip("-").isdigit():
            raise TestbedError(f"{self.name}: `{_fmt(argv)}` gave no exit code in {timeout} s")
        return int(line)

    def _wait_pidfile(self, path: Path, what: str, timeout: float = 10.0) -> int:
        deadline = time.monotonic() + timeout
        while True:
            pid = _read_pidfile(path)
            if pid is not None and _pid_alive(pid):
                return pid
            if time.monotonic() > deadline:
                raise TestbedError(f"{self.name}: {what} wrote no live pid to {path}")
            time.sleep(0.02)

    def stop_libvirtd(self, timeout: float = _DAEMON_STOP_TIMEOUT) -> None:
        """Stop libvirtd only (SIGTERM, bounded wait, SIGKILL); domains keep running."""
        if self.libvirtd_pid is not None and self._owns(self.libvirtd_pid):
            stuck = _stop_pids([self.libvirtd_pid], timeout)
            if stuck:
                raise TestbedError(f"{self.name}: libvirtd pid {stuck} would not die")
        self.libvirtd_pid = None

    # ---- use

    @property
    def _nsenter(self) -> list[str]:
        if self.keeper_pid is None or not _pid_alive(self.keeper_pid):
            raise TestbedError(f"{self.name}: the node's namespace holder is not running")
        return ["nsenter", f"--target={self.keeper_pid}", "--net", "--mount", "--"]

    def exec(self, argv: Sequence[str], **kw: Any) -> subprocess.CompletedProcess[Any]:
        """Run `argv` inside the node (its netns and mount ns); returns CompletedProcess.

        `subprocess.run` semantics (check defaults to False); defaults: text output captured,
        60 s timeout, stdin from /dev/null, cwd "/".
        """
        kw.setdefault("cwd", "/")
        return _run_in(self._nsenter, argv, kw)

    def spawn(self, argv: Sequence[str], **kw: Any) -> subprocess.Popen[Any]:
        """Start `argv` inside the node and return its Popen; `stop()` stops it (SIGTERM,
        bounded wait, SIGKILL) before anything else. For long-running things like the agent."""
        kw.setdefault("cwd", "/")
        kw.setdefault("env", _env())
        kw.setdefault("stdin", subprocess.DEVNULL)
        proc: subprocess.Popen[Any] = subprocess.Popen([*self._nsenter, *argv], **kw)
        self._spawned.append(proc)
        return proc

    popen = spawn

    def virsh(self, *args: str, check: bool = True, timeout: float = 30.0) -> str:
        """Run `virsh -c <libvirt_uri> ARGS...` (from the root namespace); return stdout."""
        return _run(["virsh", "-c", self.libvirt_uri, *args], check=check, timeout=timeout).stdout

    def host_path(self, path_in_node: str | Path) -> Path:
        """Where a path seen inside the node lives from the outside (private folders mapped)."""
        p = Path(path_in_node)
        for inside, sub in (
            ("/run", "run"),
            ("/var/lib/libvirt", "lib"),
            ("/var/cache/libvirt", "cache"),
            ("/var/log/libvirt", "log"),
            ("/etc/libvirt", "etc"),
        ):
            if p == Path(inside) or p.is_relative_to(inside):
                return self.dir / sub / p.relative_to(inside)
        return p

    def qemu_pids(self) -> list[int]:
        """Pids of QEMU processes of this node's libvirtd (from its pid files)."""
        pids = []
        for pidfile in (self.dir / "run" / "libvirt" / "qemu").glob("*.pid"):
            pid = _read_pidfile(pidfile)
            # driver.pid there is libvirtd's own lock file
            if pid is not None and _comm(pid).startswith("qemu") and self._owns(pid):
                pids.append(pid)
        return pids

    def _owns(self, pid: int) -> bool:
        """True if `pid` lives in this node's netns (guards against reused pids)."""
        return self.netns_inode is not None and _netns_of(pid) == self.netns_inode

    # ---- teardown

    def stop(self) -> None:
        """Tear the node down: spawned processes, domains, libvirtd, virtlogd, QEMU, the
        keeper, anything else in the netns; then the netns (and veth) and the folder.
        Idempotent; raises TestbedError listing what could not be cleaned (after trying all)."""
        errors = self._teardown()
        with contextlib.suppress(ValueError):
            self.world.nodes.remove(self)
        if errors:
            raise TestbedError(f"{self.name} teardown: " + "; ".join(errors))

    def _teardown_after_failure(self) -> None:
        for err in self._teardown():
            print(f"nodebox: while cleaning up failed {self.name}: {err}", file=sys.stderr)

    def _teardown(self) -> list[str]:
        errors: list[str] = []
        if self._stopped:
            return errors
        # 1. processes started with spawn(): the agent must not see the rest disappear.
        for proc in self._spawned:
            try:
                _reap(proc, _DAEMON_STOP_TIMEOUT)
            except Exception as exc:
                errors.append(f"spawned pid {proc.pid}: {exc}")
        self._spawned.clear()
        # 2. domains, politely, while libvirtd still runs.
        if self.libvirtd_pid is not None and _pid_alive(self.libvirtd_pid):
            try:
                self._remove_domains()
            except TestbedError as exc:
                errors.append(str(exc))
        # 3. daemons by pid; QEMU by pid file; then anything left in the node netns.
        daemons = [p for p in (self.libvirtd_pid, self.virtlogd_pid) if p and self._owns(p)]
        stuck = _stop_pids(daemons)
        stuck += _stop_pids(self.qemu_pids(), _KILL_TIMEOUT)
        if self.keeper_pid is not None and self._owns(self.keeper_pid):
            stuck += _stop_pids([self.keeper_pid], _KILL_TIMEOUT)
        _reap(self._keeper)
        if self.netns_inode is not None:
            stuck += _stop_pids(_pids_in_netns(self.netns_inode), _KILL_TIMEOUT)
        for reaper in self._reapers:
            _reap(reaper)
        self._reapers.clear()
        if stuck:
            errors.append(f"pids {sorted(set(stuck))} would not die")
        # 4. the netns (its end of the veth goes with it, and so does the world's end).
        try:
            _netns_del(self.netns)
        except TestbedError as exc:
            errors.append(str(exc))
        with contextlib.suppress(TestbedError):
            _run(["ip", "-n", self.world.netns, "link", "del", self.peer], check=False)
        if not _keep_dirs():
            shutil.rmtree(self.dir, ignore_errors=True)
        self._stopped = True
        return errors

    def _remove_domains(self) -> None:
        names = self.virsh("list", "--all", "--name", timeout=20).split()
        for name in names:
            self.virsh("destroy", name, check=False, timeout=30)
            self.virsh(
                "undefine", name, "--managed-save", "--snapshots-metadata", "--nvram",
                check=False, timeout=30,
            )  # fmt: skip

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def state(self) -> dict[str, Any]:
        """What `down` needs to stop this node from another process."""
        return {
            "name": self.name,
            "index": self.index,
            "dir": str(self.dir),
            "host_uuid": self.host_uuid,
            "netns_inode": self.netns_inode,
            "keeper_pid": self.keeper_pid,
            "virtlogd_pid": self.virtlogd_pid,
            "libvirtd_pid": self.libvirtd_pid,
        }

    @classmethod
    def from_state(cls, world: World, state: dict[str, Any]) -> NodeBox:
        node = cls(world, state["name"], int(state["index"]), Path(state["dir"]))
        node.host_uuid = state["host_uuid"]
        for key in ("netns_inode", "keeper_pid", "virtlogd_pid", "libvirtd_pid"):
            setattr(node, key, state.get(key))
        world.nodes.append(node)
        return node


# --------------------------------------------------------------------------- two nodes


@dataclass
class TwoNodes:
    """A world with node-a (192.0.2.11) and node-b (192.0.2.12) on its bridge.

    `start()` also checks that node-a reaches node-b's libvirtd over TCP
    (`virsh -c qemu+tcp://192.0.2.12/system version` inside node-a), as live migration needs.
    """

    world: World
    a: NodeBox
    b: NodeBox

    @property
    def nodes(self) -> tuple[NodeBox, NodeBox]:
        return (self.a, self.b)

    @classmethod
    def start(cls, base_dir: str | Path | None = None) -> TwoNodes:
        """Start a new world with both nodes; on failure everything is torn down."""
        world = World.start(base_dir)
        try:
            return cls.start_in(world)
        except BaseException:
            try:
                world.stop()
            except TestbedError as exc:
                print(f"nodebox: while cleaning up: {exc}", file=sys.stderr)
            raise

    @classmethod
    def start_in(cls, world: World) -> TwoNodes:
        """Add node-a and node-b to an existing world (the caller stops the world on failure)."""
        a = NodeBox.start(world, "node-a", 1)
        b = NodeBox.start(world, "node-b", 2)
        for src, dst in ((a, b), (b, a)):
            probe = src.exec(["virsh", "-c", dst.tcp_uri, "version"], timeout=30)
            if probe.returncode != 0:
                raise TestbedError(f"{src.name} cannot reach {dst.tcp_uri}: {probe.stderr.strip()}")
        return cls(world, a, b)

    def stop(self) -> None:
        """Stop both nodes and the world."""
        self.world.stop()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


# --------------------------------------------------------------------------- test guest


@dataclass(frozen=True)
class GuestImage:
    """The tiny test guest built by `hack/build-test-guest.sh`.

    Kernel command line: `console=ttyS0`, optional `token=<str>` and `hostname=<name>`. On
    the serial console it prints `VIRT-AGENT-NIC <if> <mac> <ip>/<prefix>` per NIC, then
    `VIRT-AGENT-READY`; it serves HTTP on port 80 (`hostname=..`, `token=..`, `uptime=..`).
    """

    dir: Path
    kernel: Path
    initrd: Path
    disk: Path | None

    READY_MARKER = "VIRT-AGENT-READY"
    NIC_MARKER = "VIRT-AGENT-NIC"

    @classmethod
    def from_dir(cls, dir: str | Path) -> GuestImage:
        """Check the folder's files (present; readable by QEMU's user) and describe them."""
        d = Path(dir)
        kernel, initrd, disk = d / "vmlinuz", d / "initrd.img", d / "disk.qcow2"
        problems = [f"missing {p}" for p in (kernel, initrd) if not p.is_file()]
        for p in (kernel, initrd):
            if p.is_file():
                problems += _world_readable_problems(p)
        if problems:
            raise TestbedError(f"test guest in {d} unusable: " + "; ".join(problems))
        return cls(d, kernel, initrd, disk if disk.is_file() else None)


def _world_readable_problems(path: Path) -> list[str]:
    """QEMU runs as libvirt-qemu: every parent folder needs o+x, the file o+r."""
    problems = []
    if not path.stat().st_mode & 0o004:
        problems.append(f"{path} is not world-readable")
    for parent in path.absolute().parents:
        if not parent.stat().st_mode & 0o001:
            problems.append(f"{parent} is not world-searchable")
    return problems


def build_test_guest(repo_root: str | Path | None = None, timeout: float = 900) -> GuestImage:
    """Run `hack/build-test-guest.sh` (cached; prints its output folder on its last line)."""
    root = Path(repo_root) if repo_root else Path(__file__).resolve().parents[2]
    script = root / "hack" / "build-test-guest.sh"
    if not script.is_file():
        raise TestbedError(f"{script} does not exist")
    proc = _run(["bash", str(script)], check=False, timeout=timeout, cwd=root)
    if proc.returncode != 0:
        raise TestbedError(
            f"{script} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
        )
    lines = [line.strip() for line in proc.stdout.splitlines() if line.strip()]
    if not lines:
        raise TestbedError(f"{script} printed nothing; expected its output folder")
    return GuestImage.from_dir(lines[-1])


# --------------------------------------------------------------------------- command line

_STATE_FILE = "nodebox-state.json"


def _cli_up(dir: Path, two: bool) -> int:
    state_file = dir / _STATE_FILE
    if state_file.exists():
        print(f"already up (found {state_file}); run `down` first", file=sys.stderr)
        return 1
    missing = requirements_missing()
    if missing:
        print("cannot start:\n  - " + "\n  - ".join(missing), file=sys.stderr)
        return 1
    t0 = time.monotonic()
    world = World.start(dir)
    try:
        if two:
            TwoNodes.start_in(world)
        else:
            NodeBox.start(world, "node-a", 1)
        state = {"world": world.state(), "nodes": [n.state() for n in world.nodes]}
        state_file.write_text(json.dumps(state, indent=2) + "\n")
    except BaseException:
        world.stop()
        raise
    took = time.monotonic() - t0
    print(f"up in {took:.1f} s; state in {state_file}")
    print(f"world   netns {world.netns}: {WORLD_BRIDGE} {world.ip}/{world.prefix}, "
          f"HTTP {world.http_url}")  # fmt: skip
    print(f"        shell: ip netns exec {world.netns} bash")
    for node in world.nodes:
        print(f"{node.name}  netns {node.netns}: {node.uplink} {node.uplink_ip}/{node.prefix}")
        print(f"        libvirt: virsh -c '{node.libvirt_uri}' list --all")
        print(f"        from another node: {node.tcp_uri}")
        print(f"        shell: nsenter --target {node.keeper_pid} --net --mount bash")
        print(f"        files: {node.dir} (logs in {node.dir / 'log'})")
    print(f"stop: hack/nodebox.sh down {dir}")
    return 0


def _cli_down(dir: Path) -> int:
    state_file = dir / _STATE_FILE
    if not state_file.exists():
        print(f"nothing to stop: no {state_file}", file=sys.stderr)
        return 1
    state = json.loads(state_file.read_text())
    world = World.from_state(state["world"])
    for node_state in state["nodes"]:
        NodeBox.from_state(world, node_state)
    state_file.unlink()
    world.stop()
    print(f"down: {world.netns} and {len(state['nodes'])} node(s) stopped")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.testbed.nodebox", description="Nodes in a box for humans."
    )
    parser.add_argument("command", choices=["up", "down"])
    parser.add_argument("--dir", default="/tmp/virt-agent-nodebox", help="state and files")
    parser.add_argument("--two", action="store_true", help="up: start node-a and node-b")
    args = parser.parse_args(argv)
    dir = Path(args.dir).absolute()
    try:
        return _cli_up(dir, args.two) if args.command == "up" else _cli_down(dir)
    except TestbedError as exc:
        print(f"nodebox: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
