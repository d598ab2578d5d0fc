"""A pull cut short (the agent killed mid-blob): the restarted agent's image cache removes
what the pull left, says so, and keeps whole entries."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from agent.disks.cache import ImageCache


def test_a_pull_interrupted_mid_blob_is_cleaned_and_logged_at_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first = ImageCache(str(tmp_path / "cache"), vm_exists=lambda _: False)
    with first.workdir() as work:  # a whole pull, published
        disk = Path(work) / "disk.img"
        disk.write_bytes(b"whole")
        digest = "sha256:" + "a" * 64
        first.publish(digest, work, str(disk), fmt="raw", image="reg/img:1", user="default_web")
    tmp = tmp_path / "cache" / "tmp"
    partial = tmp / "pull-0123456789ab"  # the next pull, killed while writing a blob
    (partial / "blobs").mkdir(parents=True)
    (partial / "blobs" / "sha256-bbbb.partial").write_bytes(b"half a layer")
    (tmp / ".tag.json.1234abcd").write_text("{")  # a tag being written

    with caplog.at_level(logging.WARNING):
        again = ImageCache(str(tmp_path / "cache"), vm_exists=lambda _: False)

    assert list(tmp.iterdir()) == []
    assert again.has(digest)  # a whole entry is kept
    repaired = [r.getMessage() for r in caplog.records if r.getMessage().startswith("repaired:")]
    assert len(repaired) == 2, repaired
    assert any("pull-0123456789ab" in line for line in repaired)
