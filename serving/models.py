"""The models one server serves, and their version labels (TF Serving's ServerCore).

One `ServableManager` per model (model_config.py says which); one poller thread
polls them all. Version labels (`version_labels` in the model config) map a name
such as "stable" or "canary" to a version, as TF Serving's
UpdateModelVersionLabelMap / GetModelVersionForLabel do:
- a request naming a label that is not assigned gets INVALID_ARGUMENT
  `Unrecognized servable version label: L`; a label whose version is not loaded
  gets the NOT_FOUND of that version (`Servable not found for request:
  Specific(M, V)`);
- labels are assigned all together or not at all, and only to versions that are
  AVAILABLE: until every labelled version is, the assignment fails with TF
  Serving's FAILED_PRECONDITION text `Request to assign label to version V of model
  M, which is not currently available for inference` (logged once) and is tried
  again after each poll. With `allow_unavailable` (TF Serving's
  --allow_version_labels_for_unavailable_models) a label not assigned yet may point
  at a version that is not available; a label already assigned still moves only to
  an available version, so its requests never hit a version that is loading.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator

from serving.errors import invalid_argument, servable_not_found
from serving.loader import Servable
from serving.manager import ServableManager, VersionStatus

log = logging.getLogger("serving")


def unrecognized_label(label: str):
    return invalid_argument(f"Unrecognized servable version label: {label}")


def label_on_unavailable_version(model: str, version: int) -> str:
    return (
        f"Request to assign label to version {version} of model {model}, which is not "
        "currently available for inference"
    )


class ModelSet:
    """Managers by model name, plus the version labels; thread-safe."""

    def __init__(
        self,
        managers: list[ServableManager],
        labels: dict[str, dict[str, int]] | None = None,
        allow_unavailable: bool = False,
    ):
        self._managers = {m.model_name: m for m in managers}  # replaced whole on reconfigure
        self._wanted = {name: dict(v) for name, v in (labels or {}).items() if v}
        self._installed: dict[str, dict[str, int]] = {}
        self._allow_unavailable = allow_unavailable
        self._lock = threading.Lock()
        self._last_label_error = ""

    @property
    def names(self) -> list[str]:
        return list(self._managers)

    def manager(self, name: str) -> ServableManager | None:
        return self._managers.get(name)

    def managers(self) -> list[ServableManager]:
        return list(self._managers.values())

    # ---- requests -------------------------------------------------------------

    def resolve(self, name: str, version: int | None, label: str = "") -> int | None:
        """The version a ModelSpec asks for (None: the latest); a label becomes its version."""
        if not label:
            return version
        with self._lock:
            found = self._installed.get(name, {}).get(label)
        if found is None:
            raise unrecognized_label(label)
        return found

    @contextlib.contextmanager
    def servable(self, name: str, version: int | None = None, label: str = "") -> Iterator[Servable]:
        version = self.resolve(name, version, label)
        manager = self._managers.get(name)
        if manager is None:
            raise servable_not_found(name, version)
        with manager.servable(name, version) as servable:
            yield servable

    def statuses(self, name: str) -> dict[int, VersionStatus]:
        manager = self._managers.get(name)
        return manager.statuses() if manager is not None else {}

    def labels(self, name: str) -> dict[str, int]:
        """The labels assigned now (not the configured ones still waiting)."""
        with self._lock:
            return dict(self._installed.get(name, {}))

    def ready(self) -> bool:
        """Every model has an available version and every configured label is assigned."""
        with self._lock:
            labels_done = self._installed == self._wanted
        return labels_done and all(m.available_versions() for m in self._managers.values())

    # ---- version management ---------------------------------------------------

    def poll(self) -> None:
        for manager in self._managers.values():
            try:
                manager.poll()
            except Exception:  # a file-system hiccup must not end version management
                log.exception("polling %s failed", manager.base_path)
        self.update_labels()

    def run(self, poll_seconds: float, stop: threading.Event) -> None:
        while not stop.is_set():
            self.poll()
            stop.wait(poll_seconds)

    def update_labels(self) -> bool:
        """Assigns the configured labels, all or none; False (and one log line per new
        reason) while a label cannot be assigned yet."""
        with self._lock:
            if self._installed == self._wanted:
                return True
            installed = {name: dict(v) for name, v in self._installed.items()}
        for name, labels in self._wanted.items():
            manager = self._managers.get(name)
            available = set(manager.available_versions()) if manager else set()
            for label, version in sorted(labels.items()):
                if version in available:
                    continue
                new_label = label not in installed.get(name, {})
                if self._allow_unavailable and new_label:
                    continue
                error = label_on_unavailable_version(name, version)
                if error != self._last_label_error:
                    log.warning("version label %r not assigned yet: %s", label, error)
                    self._last_label_error = error
                return False
        with self._lock:
            self._installed = {name: dict(v) for name, v in self._wanted.items()}
        self._last_label_error = ""
        for name, labels in self._wanted.items():
            log.info(
                "version labels of %s: %s", name, ", ".join(f"{k} -> {v}" for k, v in sorted(labels.items()))
            )
        return True

    def reconfigure(self, configs, make_manager) -> list[str]:
        """Takes a new model config (TF Serving's ReloadConfig): new models get a manager
        (`make_manager(config)`), models no longer listed are unloaded, listed ones take
        the new version policy (a new base path: a new manager), and the new labels are
        assigned as soon as they can be. Returns the names of the removed models."""
        wanted = {c.name: c for c in configs}
        managers = dict(self._managers)  # swapped in whole: request threads read it
        removed = [name for name in managers if name not in wanted]
        replaced = []
        for name, config in wanted.items():
            manager = managers.get(name)
            if manager is not None and manager.base_path == config.base_path:
                if manager.versions != config.policy:
                    log.info("model %s: now serving %s", name, config.policy.describe())
                    manager.versions = config.policy
                continue
            if manager is not None:
                replaced.append(manager)
            managers[name] = make_manager(config)
            log.info("model %s: serving %s from %s", name, config.policy.describe(), config.base_path)
        for name in removed:
            replaced.append(managers.pop(name))
            log.info("model %s: no longer in the model config; unloading it", name)
        self._managers = managers
        with self._lock:
            self._wanted = {c.name: dict(c.labels) for c in configs if c.labels}
            self._installed = {name: labels for name, labels in self._installed.items() if name in wanted}
        for manager in replaced:
            manager.unload_all()
        self.update_labels()
        return removed

    def unload_all(self, wait_seconds: float = 60.0) -> None:
        for manager in self._managers.values():
            manager.unload_all(wait_seconds)
