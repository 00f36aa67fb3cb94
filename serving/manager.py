"""The manager: which version is loaded, and safe swaps between versions.

Like TF Serving's AspiredVersionsManager with the availability-preserving
latest-version policy:
- the aspired version is the highest integer folder under the base path;
- a new version is loaded while the old one keeps serving, becomes available,
  and only then is the old one unloaded, so no request sees a gap;
- a version that fails to load is marked END with its error and never replaces
  a working one (it is retried only if its folder is replaced);
- requests hold a handle; unloading waits until in-flight requests on the old
  version have finished.
"""
from __future__ import annotations

import contextlib
import enum
import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterator

import grpc

from serving.errors import ServingError, servable_not_found
from serving.loader import Servable, load_servable
from serving.source import aspired_version

log = logging.getLogger("serving")

# A stuck request must not stall version management forever.
UNLOAD_WAIT_SECONDS = 60.0


class State(enum.IntEnum):
    """ModelVersionStatus.State of tensorflow_serving/apis/get_model_status.proto."""
    UNKNOWN = 0
    START = 10
    LOADING = 20
    AVAILABLE = 30
    UNLOADING = 40
    END = 50


@dataclass
class VersionStatus:
    state: State
    error_code: grpc.StatusCode = grpc.StatusCode.OK
    error_message: str = ""


@dataclass
class _Loaded:
    servable: Servable
    in_flight: int = 0


class ServableManager:
    """Serves one model from a base path; thread-safe."""

    def __init__(self, model_name: str, base_path: str,
                 loader: Callable[[str, int, str], Servable] = load_servable,
                 on_change: Callable[["ServableManager"], None] | None = None):
        self.model_name = model_name
        self.base_path = base_path
        self._loader = loader
        self._on_change = on_change
        self._lock = threading.Condition()
        self._loaded: dict[int, _Loaded] = {}          # versions that take requests
        self._status: dict[int, VersionStatus] = {}    # every version ever aspired
        self._failed: dict[int, tuple] = {}            # version → folder identity at failure
        self._warned_empty = False

    # ---- requests -------------------------------------------------------------

    @contextlib.contextmanager
    def servable(self, model_name: str, version: int | None = None) -> Iterator[Servable]:
        """A handle on the requested version (latest when None) for one request."""
        with self._lock:
            if model_name != self.model_name:
                raise servable_not_found(model_name, version)
            if version is None:
                entry = self._loaded[max(self._loaded)] if self._loaded else None
            else:
                entry = self._loaded.get(version)
            if entry is None:
                raise servable_not_found(model_name, version)
            entry.in_flight += 1
        try:
            yield entry.servable
        finally:
            with self._lock:
                entry.in_flight -= 1
                if entry.in_flight == 0:
                    self._lock.notify_all()

    def statuses(self) -> dict[int, VersionStatus]:
        with self._lock:
            return dict(self._status)

    def available_versions(self) -> list[int]:
        with self._lock:
            return sorted(self._loaded)

    # ---- version management ---------------------------------------------------

    def poll(self) -> None:
        """One reconciliation step: load the aspired version if it is new, then unload the rest."""
        target = aspired_version(self.base_path, exclude=self._still_failed())
        with self._lock:
            current = max(self._loaded) if self._loaded else None
        if target is None:
            if not self._warned_empty:
                log.warning("no servable versions of %s under %s%s", self.model_name,
                            self.base_path, f"; keeping version {current}" if current else "")
                self._warned_empty = True
            return
        self._warned_empty = False
        if target.version == current:
            return
        if not self._load(target.version, target.path):
            return
        for version in [v for v in self.available_versions() if v != target.version]:
            self._unload(version)

    def run(self, poll_seconds: float, stop: threading.Event) -> None:
        """Polls until `stop` is set; errors in one poll are logged, never fatal."""
        while not stop.is_set():
            try:
                self.poll()
            except Exception:   # a file-system hiccup must not end version management
                log.exception("polling %s failed", self.base_path)
            stop.wait(poll_seconds)

    def unload_all(self) -> None:
        for version in self.available_versions():
            self._unload(version)

    def _still_failed(self) -> set[int]:
        """Failed versions whose folder is unchanged; a replaced folder gets another try."""
        still = set()
        for version, identity in list(self._failed.items()):
            if _folder_identity(os.path.join(self.base_path, str(version))) == identity:
                still.add(version)
            else:
                del self._failed[version]
        return still

    def _set_status(self, version: int, status: VersionStatus) -> None:
        with self._lock:
            self._status[version] = status
        if self._on_change is not None:
            self._on_change(self)

    def _load(self, version: int, path: str) -> bool:
        self._set_status(version, VersionStatus(State.START))
        self._set_status(version, VersionStatus(State.LOADING))
        start = time.monotonic()
        try:
            servable = self._loader(self.model_name, version, path)
        except ServingError as err:
            return self._fail(version, path, err.code, err.message)
        except Exception as err:  # any reason a folder cannot be served is a load failure
            return self._fail(version, path, grpc.StatusCode.UNKNOWN,
                              f"{type(err).__name__}: {err}".strip())
        with self._lock:
            self._loaded[version] = _Loaded(servable)
        self._set_status(version, VersionStatus(State.AVAILABLE))
        log.info("loaded %s version %d from %s in %.1f s", self.model_name, version, path,
                 time.monotonic() - start)
        return True

    def _fail(self, version: int, path: str, code: grpc.StatusCode, message: str) -> bool:
        self._failed[version] = _folder_identity(path)
        first_line = message.splitlines()[0] if message else code.name
        self._set_status(version, VersionStatus(State.END, code, message))
        log.error("failed to load %s version %d from %s: %s (still serving %s)",
                  self.model_name, version, path, first_line,
                  ", ".join(map(str, self.available_versions())) or "nothing")
        return False

    def _unload(self, version: int) -> None:
        with self._lock:
            entry = self._loaded.pop(version, None)   # new requests no longer find it
            if entry is None:
                return
        self._set_status(version, VersionStatus(State.UNLOADING))
        deadline = time.monotonic() + UNLOAD_WAIT_SECONDS
        with self._lock:
            while entry.in_flight and time.monotonic() < deadline:
                self._lock.wait(deadline - time.monotonic())
            stuck = entry.in_flight
        if stuck:
            log.warning("%d requests still running on %s version %d; unloading anyway",
                        stuck, self.model_name, version)
        self._set_status(version, VersionStatus(State.END))
        log.info("unloaded %s version %d", self.model_name, version)


def _folder_identity(path: str) -> tuple | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns)
