"""Where versions come from: TF Serving's file-system storage path source.

A model's base path holds one folder per version (`<base>/<version>/saved_model.pb`).
A version name is plain ASCII digits whose value is an int64 above 0
(1 .. 9223372036854775807): what a ModelSpec, GetModelStatus and the REST paths can
carry. Leading zeros are allowed and ignored ('007' is version 7, as TF Serving
parses it); when two names give the same number ('7' and '007') the one with the
fewest leading zeros is used, as TF Serving's sorted listing does. Everything else
is ignored: hidden staging folders (the pusher writes `.staging-*` and renames it
into place), files, names with signs, spaces or other characters, 0, and numbers
beyond int64. `VersionSource` says so once per ignored name, not on every poll.
The latest-version policy serves the highest version.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from collections.abc import Callable

log = logging.getLogger("serving")

INT64_MAX = 2**63 - 1
_MAX_DIGITS = len(str(INT64_MAX))  # leading zeros aside, longer numbers cannot fit
_MAX_REMEMBERED_NAMES = 10_000  # ignored names reported once each, up to this many


@dataclass(frozen=True, order=True)
class VersionDir:
    version: int
    path: str


def parse_version(name: str) -> int | None:
    """The version a folder name stands for, or None when it is not one."""
    if not name or not (name.isascii() and name.isdigit()):
        return None
    digits = name.lstrip("0")
    if not digits or len(digits) > _MAX_DIGITS:
        return None
    version = int(digits)
    return version if version <= INT64_MAX else None


def _why_not_a_version(name: str) -> str:
    if name.isascii() and name.isdigit():
        return "0 is not a version" if not name.lstrip("0") else "larger than the largest version (int64)"
    return "not a version number"


def list_versions(base_path: str, ignored: Callable[[str, str], None] | None = None) -> list[VersionDir]:
    """Version folders under `base_path`, lowest first. `ignored(name, reason)` hears
    about every other entry.

    A missing or unreadable base path yields no versions, not an error: it may
    be a mount that is back at the next poll.
    """
    try:
        entries = list(os.scandir(base_path))
    except OSError:
        return []
    by_version: dict[int, os.DirEntry] = {}
    for entry in sorted(entries, key=lambda e: e.name):
        name = entry.name
        version = parse_version(name)
        if version is None:
            if ignored is not None:
                ignored(name, _why_not_a_version(name))
            continue
        try:
            is_dir = entry.is_dir()
        except OSError:
            is_dir = False
        if not is_dir:
            if ignored is not None:
                ignored(name, "a file, not a folder")
            continue
        if version in by_version and ignored is not None:
            # Sorted by name: this one has fewer leading zeros and wins.
            ignored(by_version[version].name, f"same version as {name!r}, which is used")
        by_version[version] = entry
    return sorted(VersionDir(v, e.path) for v, e in by_version.items())


def aspired_version(base_path: str, exclude: set[int] = frozenset()) -> VersionDir | None:
    """The version the latest-version policy wants loaded: the highest one not in `exclude`."""
    for candidate in reversed(list_versions(base_path)):
        if candidate.version not in exclude:
            return candidate
    return None


class VersionSource:
    """`list_versions` for a poller: each ignored name is logged once (one line)."""

    def __init__(self, base_path: str):
        self.base_path = base_path
        self._reported: set[tuple[str, str]] = set()

    def versions(self) -> list[VersionDir]:
        return list_versions(self.base_path, self._ignored)

    def _ignored(self, name: str, reason: str) -> None:
        key = (name, reason)
        if key in self._reported:
            return
        if len(self._reported) >= _MAX_REMEMBERED_NAMES:
            self._reported.clear()
        self._reported.add(key)
        shown = name if len(name) <= 80 else name[:80] + "..."
        log.info("ignoring %r in %s: %s", shown, self.base_path, reason)
