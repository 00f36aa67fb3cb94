"""The manager: which version is loaded, and safe swaps between versions.

Like TF Serving's AspiredVersionsManager with the availability-preserving policy:
- the aspired versions are chosen among the version folders under the base path
  (source.py says which names are versions) by the model's version policy
  (model_config.py): the highest one (the default), the latest N, all, or specific
  ones. With the latest-N policy a version that failed to load does not count, so
  the next lower one is served instead;
- a folder whose files changed since the last poll is still being written: it is
  loaded once it has stayed unchanged for one poll (a fresh folder whose files are
  older than `settle_seconds` is loaded at once, e.g. at start-up);
- a new version is loaded while the old one keeps serving, must replay its warm-up
  requests and answer a canary request correctly, becomes available, and only then
  are versions no longer aspired unloaded (when at least one aspired version is
  available), so no request sees a gap;
- a version that fails to load or fails its canary is marked END with its error
  and never replaces a working one. It is tried again when its files change (and
  then stay unchanged for a poll), and otherwise up to `max_retries` times,
  `retry_interval_seconds` apart (TF Serving's max_num_load_retries and
  load_retry_interval_micros);
- requests hold a handle; unloading waits until in-flight requests on the old
  version have finished.
Errors reported to clients (GetModelStatus) never name server paths.
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import logging
import os
import threading
import time
from dataclasses import dataclass
from collections.abc import Callable, Iterator

import grpc

from serving.errors import ServingError, client_text, one_line, redact_paths, servable_not_found
from serving.loader import Servable, load_servable
from serving.model_config import ALL, LATEST_ONE, SPECIFIC, VersionPolicy
from serving.source import VersionDir, VersionSource

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


@dataclass(frozen=True)
class LoadPolicy:
    """When folders are loaded and failed loads tried again."""

    max_retries: int = 5  # TF Serving's --max_num_load_retries
    retry_interval_seconds: float = 60.0  # TF Serving's --load_retry_interval_micros, in seconds
    settle_seconds: float = 2.0  # files newer than this: wait one poll for them to settle


@dataclass
class _Track:
    """What the poller knows of one version folder."""

    seen: str  # fingerprint at the last poll
    failed: str | None = None  # fingerprint when its last load failed
    retries: int = 0
    next_retry: float = 0.0


_WAIT, _SKIP, _LOAD = "wait", "skip", "load"
_MAX_FINGERPRINT_ENTRIES = 10_000


def folder_fingerprint(path: str) -> tuple[str, float]:
    """(digest of every entry's relative path, size and mtime; newest mtime) of a folder:
    changes while files are copied in, written or replaced."""
    digest = hashlib.sha1()
    newest = 0.0
    try:
        st = os.stat(path)
    except OSError:
        return "missing", 0.0
    digest.update(f"{st.st_ino} {st.st_mtime_ns}\n".encode())
    newest = st.st_mtime
    count = 0
    for root, dirs, files in os.walk(path):
        dirs.sort()
        for name in sorted(dirs + files):
            count += 1
            if count > _MAX_FINGERPRINT_ENTRIES:
                digest.update(b"...")
                return digest.hexdigest(), newest
            full = os.path.join(root, name)
            try:
                st = os.lstat(full)
            except OSError:
                continue
            rel = os.path.relpath(full, path)
            digest.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode(errors="replace"))
            newest = max(newest, st.st_mtime)
    return digest.hexdigest(), newest


class ServableManager:
    """Serves one model from a base path; thread-safe."""

    def __init__(
        self,
        model_name: str,
        base_path: str,
        loader: Callable[[str, int, str], Servable] = load_servable,
        on_change: Callable[[ServableManager], None] | None = None,
        policy: LoadPolicy = LoadPolicy(),
        canary: Callable[[Servable], None] | None = None,
        versions: VersionPolicy = LATEST_ONE,
    ):
        self.model_name = model_name
        self.base_path = base_path
        self.policy = policy
        self.versions = versions
        self._loader = loader
        self._canary = canary
        self._on_change = on_change
        self._source = VersionSource(base_path)
        self._lock = threading.Condition()
        self._loaded: dict[int, _Loaded] = {}  # versions that take requests
        self._status: dict[int, VersionStatus] = {}  # every version ever aspired
        self._tracks: dict[int, _Track] = {}  # version folders seen by the poller
        self._warned_empty = False
        self._redactions = {
            root: "<model base path>"
            for root in {base_path, os.path.abspath(base_path), os.path.realpath(base_path)}
        }

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
        """One reconciliation step: load the aspired versions that are new and ready, then
        unload the versions no longer aspired (once an aspired one is available)."""
        candidates = self._source.versions()
        present = {c.version for c in candidates}
        for version in [v for v in self._tracks if v not in present]:
            del self._tracks[version]  # removed: a folder of that name later is new
        loaded = set(self.available_versions())
        if not candidates:
            if not self._warned_empty:
                log.warning(
                    "no servable versions of %s under %s%s",
                    self.model_name,
                    self.base_path,
                    f"; keeping versions {sorted(loaded)}" if loaded else "",
                )
                self._warned_empty = True
            return
        self._warned_empty = False
        if self.versions.kind in (ALL, SPECIFIC):
            wanted = [
                c for c in candidates if self.versions.kind == ALL or c.version in self.versions.versions
            ]
            aspired = {c.version for c in wanted}
            for candidate in reversed(wanted):
                if candidate.version not in loaded:
                    self._try(candidate)
        else:
            aspired = set()
            for candidate in reversed(candidates):  # highest first
                if len(aspired) >= self.versions.num_versions:
                    break
                if candidate.version in loaded:
                    aspired.add(candidate.version)
                    continue
                outcome = self._try(candidate)
                if outcome != _SKIP:  # loaded, or still being written: it counts
                    aspired.add(candidate.version)
        available = set(self.available_versions())
        if available & aspired:
            for version in sorted(available - aspired):
                self._unload(version)

    def _try(self, candidate: VersionDir) -> str:
        """Loads a candidate if it is ready: _LOAD (loaded), _WAIT (not yet), _SKIP (failed)."""
        decision, fingerprint = self._decide(candidate)
        if decision != _LOAD:
            return decision
        return _LOAD if self._load(candidate, fingerprint) else _SKIP

    def _decide(self, candidate: VersionDir) -> tuple[str, str]:
        fingerprint, newest = folder_fingerprint(candidate.path)
        track = self._tracks.get(candidate.version)
        if track is None:
            self._tracks[candidate.version] = _Track(seen=fingerprint)
            if time.time() - newest < self.policy.settle_seconds:
                log.debug("version %d was just written; loading it once it is unchanged", candidate.version)
                return _WAIT, fingerprint
            return _LOAD, fingerprint
        if fingerprint != track.seen:  # still being written
            track.seen = fingerprint
            return _WAIT, fingerprint
        if track.failed is None:
            return _LOAD, fingerprint
        if fingerprint != track.failed:  # changed since it failed, and now settled
            track.retries = 0
            return _LOAD, fingerprint
        if track.retries < self.policy.max_retries and time.monotonic() >= track.next_retry:
            track.retries += 1
            return _LOAD, fingerprint
        return _SKIP, fingerprint

    def run(self, poll_seconds: float, stop: threading.Event) -> None:
        """Polls until `stop` is set; errors in one poll are logged, never fatal."""
        while not stop.is_set():
            try:
                self.poll()
            except Exception:  # a file-system hiccup must not end version management
                log.exception("polling %s failed", self.base_path)
            stop.wait(poll_seconds)

    def unload_all(self, wait_seconds: float = 60.0) -> None:
        for version in self.available_versions():
            self._unload(version, wait_seconds)

    def _set_status(self, version: int, status: VersionStatus) -> None:
        with self._lock:
            self._status[version] = status
        if self._on_change is not None:
            self._on_change(self)

    def _load(self, candidate: VersionDir, fingerprint: str) -> bool:
        version, path = candidate.version, candidate.path
        self._set_status(version, VersionStatus(State.START))
        self._set_status(version, VersionStatus(State.LOADING))
        start = time.monotonic()
        try:
            servable = self._loader(self.model_name, version, path)
        except ServingError as err:
            return self._fail(version, path, fingerprint, err.code, err.message)
        except Exception as err:  # any reason a folder cannot be served is a load failure
            return self._fail(
                version, path, fingerprint, grpc.StatusCode.UNKNOWN, f"{type(err).__name__}: {err}".strip()
            )
        if self._canary is not None:
            try:
                self._canary(servable)
            except ServingError as err:
                return self._fail(
                    version, path, fingerprint, err.code, f"canary request failed: {err.message}"
                )
            except Exception as err:
                return self._fail(
                    version,
                    path,
                    fingerprint,
                    grpc.StatusCode.UNKNOWN,
                    f"canary request failed: {type(err).__name__}: {err}",
                )
        track = self._tracks.get(version)
        if track is not None:
            track.failed, track.retries = None, 0
        with self._lock:
            self._loaded[version] = _Loaded(servable)
        self._set_status(version, VersionStatus(State.AVAILABLE))
        log.info(
            "loaded %s version %d from %s in %.1f s", self.model_name, version, path, time.monotonic() - start
        )
        return True

    def _fail(self, version: int, path: str, fingerprint: str, code: grpc.StatusCode, message: str) -> bool:
        track = self._tracks.setdefault(version, _Track(seen=fingerprint))
        track.failed = fingerprint
        track.next_retry = time.monotonic() + self.policy.retry_interval_seconds
        for_client = client_text(redact_paths(message, self._redactions)) or code.name
        self._set_status(version, VersionStatus(State.END, code, for_client))
        left = self.policy.max_retries - track.retries
        retry = (
            f"next try in {self.policy.retry_interval_seconds:g} s ({left} left) or when its files change"
            if left > 0
            else "next try when its files change"
        )
        log.error(
            "failed to load %s version %d from %s: %s (still serving %s; %s)",
            self.model_name,
            version,
            path,
            one_line(message.splitlines()[0] if message else code.name),
            ", ".join(map(str, self.available_versions())) or "nothing",
            retry,
        )
        return False

    def _unload(self, version: int, wait_seconds: float = UNLOAD_WAIT_SECONDS) -> None:
        with self._lock:
            entry = self._loaded.pop(version, None)  # new requests no longer find it
            if entry is None:
                return
        self._set_status(version, VersionStatus(State.UNLOADING))
        deadline = time.monotonic() + wait_seconds
        with self._lock:
            while entry.in_flight and time.monotonic() < deadline:
                self._lock.wait(deadline - time.monotonic())
            stuck = entry.in_flight
        if stuck:
            log.warning(
                "%d requests still running on %s version %d; unloading anyway",
                stuck,
                self.model_name,
                version,
            )
        self._set_status(version, VersionStatus(State.END))
        log.info("unloaded %s version %d", self.model_name, version)
