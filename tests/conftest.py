"""Shared fixtures: nodes in a box for system and multi-node tests, the test guest.

System tests (marked `system`) never skip: when the machine lacks what they need, their
fixtures FAIL with the reasons, and a skip of a `system` test from anywhere is turned into
a failure. At the end of the session, any network namespace this run created and did not
delete fails the run.
"""

from __future__ import annotations

import contextlib
import inspect
import signal
import sys
from collections.abc import Generator, Iterator
from pathlib import Path
from types import FrameType

import pytest

_ROOT = Path(__file__).resolve().parent.parent
if str(_ROOT) not in sys.path:  # `tests.testbed` must import however pytest was started
    sys.path.insert(0, str(_ROOT))

from tests.testbed import nodebox  # noqa: E402
from tests.testbed.nodebox import (  # noqa: E402
    GuestImage,
    NodeBox,
    TestbedError,
    TwoNodes,
    World,
    requirements_missing,
)


def pytest_configure(config: pytest.Config) -> None:
    """SIGTERM (e.g. from `timeout` or CI) interrupts like Ctrl-C, so that fixtures still tear
    the test bed down; a second SIGTERM kills at once."""
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:

        def interrupt(signum: int, frame: FrameType | None) -> None:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            raise KeyboardInterrupt("SIGTERM")

        signal.signal(signal.SIGTERM, interrupt)


def _require_testbed() -> None:
    missing = requirements_missing()
    if missing:
        pytest.fail(
            "the system test bed cannot run on this machine:\n  - " + "\n  - ".join(missing),
            pytrace=False,
        )


@pytest.fixture(scope="session")
def world() -> Iterator[World]:
    """The outside network: netns with bridge wbr0 at 192.0.2.1/24 and an HTTP server."""
    _require_testbed()
    w = World.start()
    try:
        yield w
    finally:
        w.stop()


@pytest.fixture(scope="session")
def node(world: World) -> Iterator[NodeBox]:
    """node-a (192.0.2.11) in `world`: own netns, mount ns, virtlogd and libvirtd."""
    n = NodeBox.start(world, name="node-a", index=1)
    try:
        yield n
    finally:
        n.stop()


@pytest.fixture(scope="session")
def two_nodes() -> Iterator[TwoNodes]:
    """A world of its own with node-a (192.0.2.11) and node-b (192.0.2.12), TCP-reachable
    libvirtds with distinct host UUIDs (ready for live migration)."""
    _require_testbed()
    pair = TwoNodes.start()
    try:
        yield pair
    finally:
        pair.stop()


@pytest.fixture(scope="session")
def test_guest() -> GuestImage:
    """The tiny test guest (kernel, initrd, maybe disk) from `hack/build-test-guest.sh`."""
    _require_testbed()
    try:
        return nodebox.build_test_guest(_ROOT)
    except TestbedError as exc:
        pytest.fail(f"cannot build the test guest: {exc}", pytrace=False)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A `system` test that skips (for any reason, in any phase) is reported as failed; any
    other test may skip only where its skip is marked ``# allowed-skip`` (with why it never
    skips in CI)."""
    report = yield
    if not report.skipped or hasattr(report, "wasxfail"):
        return report
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
    if item.get_closest_marker("system"):
        report.outcome = "failed"
        report.longrepr = f"system tests must not skip, but this one did ({report.when}): {reason}"
    elif not _skip_allowed(item, report):
        report.outcome = "failed"
        report.longrepr = (
            f"a test may only skip where the skip says '# allowed-skip' ({report.when}): {reason}"
        )
    return report


def _skip_allowed(item: pytest.Item, report: pytest.TestReport) -> bool:
    """Whether the skip's own line, or the test's decorators, carry ``# allowed-skip``."""
    lines: list[str] = []
    if isinstance(report.longrepr, tuple):
        path, lineno, _ = report.longrepr
        with contextlib.suppress(OSError, IndexError):
            lines.append(Path(path).read_text().splitlines()[lineno])  # lineno counts from 0
    function = getattr(item, "function", None)
    if function is not None:
        with contextlib.suppress(OSError, TypeError):
            source, _ = inspect.getsourcelines(function)
            lines.extend(line for line in source if not line.lstrip().startswith("def "))
    return any("# allowed-skip" in line for line in lines)


@pytest.hookimpl(trylast=True)  # after the runner has torn down session fixtures
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run if a network namespace created by this run is still there."""
    if not nodebox.CREATED_NETNS:
        return
    leaked = nodebox.leaked_netns()
    if not leaked:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    message = f"network namespaces left behind by this run: {', '.join(leaked)}"
    if reporter is not None:
        reporter.ensure_newline()
        reporter.write_line(f"ERROR: {message}", red=True, bold=True)
    else:
        print(f"ERROR: {message}", file=sys.stderr)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
