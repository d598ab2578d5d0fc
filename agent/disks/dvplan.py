"""The import of one DataVolume template as a pure state machine: which step comes next.

No I/O here: ``agent.disks.dvimport`` runs the steps and feeds their outcomes back. A claim
is filled under temporary names in its own folder and linked to ``disk.img`` by the last
step, so a claim holding ``disk.img`` is always complete:

    complete claim ─────────────────────────────────────────────────────────────▶ DONE
    leftovers of an interrupted import ─▶ CLEAN ─▶ (start again)
    blank:     CREATE_BLANK ─────────────────────────────────────────▶ PUBLISH ─▶ DONE
    http:      FETCH (download) ─▶ [UNPACK gz/xz] ─▶ CONVERT ─▶ GROW ─▶ PUBLISH ─▶ DONE
    registry:  FETCH (pull into the image cache) ──▶ CONVERT ─▶ GROW ─▶ PUBLISH ─▶ DONE
    pvc:       FETCH (find the claim to clone) ────▶ CONVERT ─▶ GROW ─▶ PUBLISH ─▶ DONE

A failed step ends the machine in FAILED; the runner then removes every temporary file.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass

from agent.datavolume import BlankImport, DataVolumeTemplate

__all__ = [
    "COMPRESSED",
    "DOWNLOAD",
    "IMPORTING",
    "TEMP_PREFIX",
    "UNPACKED",
    "ImportState",
    "Stage",
    "Step",
    "advance",
    "begin",
    "fail",
    "next_step",
    "sniff_format",
]

TEMP_PREFIX = ".disk.img."  # every temporary file of an import starts so
DOWNLOAD = ".disk.img.download"  # the bytes as downloaded
UNPACKED = ".disk.img.unpacked"  # a compressed download, decompressed
IMPORTING = ".disk.img.importing"  # the raw disk being made; linked to disk.img at the end
COMPRESSED = ("gzip", "xz")


class Stage(enum.StrEnum):
    CLEAN = "Clean"
    CREATE_BLANK = "CreateBlank"
    FETCH = "Fetch"
    UNPACK = "Unpack"
    CONVERT = "Convert"
    GROW = "Grow"
    PUBLISH = "Publish"
    DONE = "Done"
    FAILED = "Failed"


@dataclass(frozen=True, slots=True)
class Step:
    """What to do next; ``path``/``format`` are the input of UNPACK and CONVERT."""

    stage: Stage
    path: str = ""
    format: str = ""
    leftovers: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ImportState:
    """Where one template's import is; ``fetched`` is the file to take the data from."""

    template: DataVolumeTemplate
    complete: bool = False
    leftovers: tuple[str, ...] = ()
    fetched: str = ""
    fetched_format: str = ""  # raw, qcow2, gzip or xz
    converted: bool = False
    grown: bool = False
    published: bool = False
    error: str = ""


def begin(
    template: DataVolumeTemplate, *, complete: bool, leftovers: tuple[str, ...]
) -> ImportState:
    """The state of a template's claim as found: complete, or with leftovers to clean."""
    return ImportState(template, complete=complete, leftovers=() if complete else leftovers)


def next_step(state: ImportState) -> Step:
    """The step to run next (DONE and FAILED are final)."""
    if state.error:
        return Step(Stage.FAILED)
    if state.complete or state.published:
        return Step(Stage.DONE)
    if state.leftovers:
        return Step(Stage.CLEAN, leftovers=state.leftovers)
    if not state.fetched and not state.grown:
        if isinstance(state.template.source, BlankImport):
            return Step(Stage.CREATE_BLANK)
        return Step(Stage.FETCH)
    if state.fetched_format in COMPRESSED:
        return Step(Stage.UNPACK, path=state.fetched, format=state.fetched_format)
    if not state.converted and not state.grown:
        return Step(Stage.CONVERT, path=state.fetched, format=state.fetched_format)
    if not state.grown:
        return Step(Stage.GROW)
    return Step(Stage.PUBLISH)


def advance(state: ImportState, step: Step, *, path: str = "", fmt: str = "") -> ImportState:
    """The state after ``step`` succeeded; FETCH and UNPACK report the file they made and
    its format (as ``sniff_format`` tells)."""
    stage = step.stage
    if stage == Stage.CLEAN:
        return dataclasses.replace(state, leftovers=())
    if stage == Stage.CREATE_BLANK:
        return dataclasses.replace(state, converted=True, grown=True)
    if stage in (Stage.FETCH, Stage.UNPACK):
        if not path or not fmt:
            raise ValueError(f"{stage} must report the file it made and its format")
        return dataclasses.replace(state, fetched=path, fetched_format=fmt)
    if stage == Stage.CONVERT:
        return dataclasses.replace(state, converted=True)
    if stage == Stage.GROW:
        return dataclasses.replace(state, grown=True)
    if stage == Stage.PUBLISH:
        return dataclasses.replace(state, published=True)
    raise ValueError(f"{stage} is final")


def fail(state: ImportState, error: str) -> ImportState:
    return dataclasses.replace(state, error=error or "failed")


def sniff_format(header: bytes) -> str:
    """The format of a file from its first bytes: gzip, xz, qcow2, or raw (anything else)."""
    if header.startswith(b"\x1f\x8b"):
        return "gzip"
    if header.startswith(b"\xfd7zXZ\x00"):
        return "xz"
    if header.startswith(b"QFI\xfb"):
        return "qcow2"
    return "raw"
