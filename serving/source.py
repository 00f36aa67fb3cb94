"""Where versions come from: TF Serving's file-system storage path source.

A model's base path holds one folder per version, named by a positive integer
(`<base>/<version>/saved_model.pb`). Anything else is ignored: hidden staging
folders (the pusher writes `.staging-*` and renames it into place), files, and
names that are not integers. The latest-version policy serves the highest one.
"""
from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class VersionDir:
    version: int
    path: str


def list_versions(base_path: str) -> list[VersionDir]:
    """Integer version folders under `base_path`, lowest first.

    A missing or unreadable base path yields no versions, not an error: it may
    be a mount that is back at the next poll.
    """
    try:
        entries = list(os.scandir(base_path))
    except OSError:
        return []
    versions = []
    for entry in entries:
        name = entry.name
        # str.isdigit accepts e.g. '²'; only plain ASCII digits are version numbers.
        if not (name.isascii() and name.isdigit()):
            continue
        try:
            if not entry.is_dir():
                continue
        except OSError:
            continue
        version = int(name)
        if version > 0:
            versions.append(VersionDir(version, entry.path))
    return sorted(versions)


def aspired_version(base_path: str, exclude: set[int] = frozenset()) -> VersionDir | None:
    """The version the latest-version policy wants loaded: the highest one not in `exclude`."""
    for candidate in reversed(list_versions(base_path)):
        if candidate.version not in exclude:
            return candidate
    return None
