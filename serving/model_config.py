"""Which models the server serves: TF Serving's ModelServerConfig (`--model-config-file`).

The file is the text format of tensorflow_serving/config/model_server_config.proto,
the same file the official `tensorflow_model_server --model_config_file` reads:

    model_config_list {
      config {
        name: "brain_tumor"
        base_path: "/models/brain_tumor"
        model_platform: "tensorflow"
        model_version_policy { specific { versions: 1700000000 versions: 1700000500 } }
        version_labels { key: "stable" value: 1700000000 }
        version_labels { key: "canary" value: 1700000500 }
      }
    }

Read here: several models (`config` entries), each with `name`, `base_path`,
`model_platform` (empty or "tensorflow"), `model_version_policy` (`latest
{num_versions}`, `all {}`, `specific {versions}`; default: the latest one) and
`version_labels`. Errors are ValueErrors naming the file and the problem, with TF
Serving's texts where it has one. A relative base_path is taken from the current
folder, as TF Serving takes it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

TENSORFLOW_PLATFORM = "tensorflow"
LATEST, ALL, SPECIFIC = "latest", "all", "specific"


@dataclass(frozen=True)
class VersionPolicy:
    """TF Serving's FileSystemStoragePathSourceConfig.ServableVersionPolicy."""

    kind: str = LATEST
    num_versions: int = 1  # LATEST: how many of the highest versions
    versions: tuple[int, ...] = ()  # SPECIFIC: exactly these

    def describe(self) -> str:
        if self.kind == ALL:
            return "all versions"
        if self.kind == SPECIFIC:
            return "versions " + ", ".join(map(str, sorted(self.versions)))
        return "the latest version" if self.num_versions == 1 else f"the latest {self.num_versions} versions"


LATEST_ONE = VersionPolicy()


@dataclass(frozen=True)
class ModelConfig:
    """One model the server serves."""

    name: str
    base_path: str
    policy: VersionPolicy = LATEST_ONE
    labels: dict[str, int] = field(default_factory=dict)  # version label → version


def _policy(proto, where: str) -> VersionPolicy:
    choice = proto.WhichOneof("policy_choice")
    if choice is None:
        return LATEST_ONE
    if choice == LATEST:
        n = proto.latest.num_versions or 1
        if n < 1:
            raise ValueError(f"{where}: latest num_versions must be at least 1, got {n}")
        return VersionPolicy(LATEST, num_versions=n)
    if choice == ALL:
        return VersionPolicy(ALL)
    versions = tuple(sorted(set(proto.specific.versions)))
    if not versions:
        raise ValueError(f"{where}: the specific version policy lists no versions")
    if min(versions) < 1:
        raise ValueError(f"{where}: versions are positive integers, got {min(versions)}")
    return VersionPolicy(SPECIFIC, versions=versions)


def parse_model_config(text: str, source: str = "<model config>") -> list[ModelConfig]:
    """The models of a ModelServerConfig in text format."""
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    config = model_server_config_pb2.ModelServerConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as err:
        raise ValueError(f"{source}: not a ModelServerConfig in text format: {err}") from None
    if config.WhichOneof("config") != "model_config_list":
        raise ValueError(f"{source}: needs a model_config_list (custom_model_config is not supported)")
    models: list[ModelConfig] = []
    for entry in config.model_config_list.config:
        where = f"{source}: model {entry.name!r}"
        if not entry.name:
            raise ValueError(f"{source}: a config entry has no name")
        if any(m.name == entry.name for m in models):
            raise ValueError(f"{source}: Illegal to list model {entry.name} multiple times in config list")
        if not entry.base_path:
            raise ValueError(f"{where}: no base_path")
        if entry.model_platform not in ("", TENSORFLOW_PLATFORM):
            raise ValueError(
                f"{where}: Model {entry.name} requested unsupported platform {entry.model_platform}"
            )
        labels = dict(entry.version_labels)
        for label, version in labels.items():
            if not label:
                raise ValueError(f"{where}: a version label has an empty name")
            if version < 1:
                raise ValueError(f"{where}: label {label!r} points at version {version}")
        models.append(
            ModelConfig(
                entry.name,
                os.path.abspath(entry.base_path),
                _policy(entry.model_version_policy, where),
                labels,
            )
        )
    if not models:
        raise ValueError(f"{source}: the model_config_list lists no model")
    return models


def read_model_config_file(path: str) -> list[ModelConfig]:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as err:
        raise ValueError(f"cannot read the model config file {path}: {err.strerror or err}") from None
    return parse_model_config(text, path)
