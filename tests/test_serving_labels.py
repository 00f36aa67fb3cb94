"""Several models, version policies and version labels (TF Serving's ModelServerConfig,
`btmri serve --model-config-file`).

Units first (the config reader, the policies on a manager with a stand-in loader, the
label map), then `btmri serve` in a subprocess on copies of the tiny pipeline model:
labels resolved over gRPC and REST, unknown labels refused with TF Serving's code and
text, `btmri predict --label`."""
from __future__ import annotations

import os
import time
from pathlib import Path

import grpc
import pytest

from serving.errors import ServingError
from serving.manager import LoadPolicy, ServableManager, State
from serving.model_config import ALL, LATEST, SPECIFIC, parse_model_config, read_model_config_file
from serving.models import ModelSet

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "serving" / "config"


# ---- the config file ------------------------------------------------------------------

def test_shipped_canary_config_is_a_stable_canary_pair():
    (model,) = read_model_config_file(str(CONFIG / "canary.config"))
    assert model.name == "brain_tumor" and model.base_path == "/models/brain_tumor"
    assert model.policy.kind == SPECIFIC
    assert set(model.labels) == {"stable", "canary"}
    assert set(model.labels.values()) == set(model.policy.versions)
    assert model.labels["canary"] > model.labels["stable"]


def test_model_config_reader_takes_every_policy_and_refuses_bad_files(tmp_path):
    text = """model_config_list {
      config { name: "a" base_path: "/m/a" model_platform: "tensorflow" }
      config { name: "b" base_path: "rel/b" model_version_policy { latest { num_versions: 3 } } }
      config { name: "c" base_path: "/m/c" model_version_policy { all {} } }
      config { name: "d" base_path: "/m/d" model_version_policy { specific { versions: 7 versions: 5 } }
               version_labels { key: "stable" value: 5 } version_labels { key: "canary" value: 7 } }
    }"""
    a, b, c, d = parse_model_config(text)
    assert (a.policy.kind, a.policy.num_versions, a.labels) == (LATEST, 1, {})
    assert (b.policy.kind, b.policy.num_versions) == (LATEST, 3)
    assert b.base_path == os.path.abspath("rel/b")          # relative to the current folder
    assert c.policy.kind == ALL
    assert (d.policy.kind, d.policy.versions, d.labels) == (SPECIFIC, (5, 7), {"stable": 5, "canary": 7})

    for bad, message in [
        ("model_config_list { config { name: 'a' base_path: '/x' } config { name: 'a' base_path: '/y' } }",
         "Illegal to list model a multiple times in config list"),
        ("model_config_list { config { name: 'a' base_path: '/x' model_platform: 'pytorch' } }",
         "requested unsupported platform pytorch"),
        ("model_config_list { config { name: 'a' } }", "no base_path"),
        ("model_config_list { config { name: 'a' base_path: '/x' "
         "model_version_policy { specific {} } } }", "lists no versions"),
        ("model_config_list { config { name: 'a' base_path: '/x' nonsense: 1 } }", "not a ModelServerConfig"),
        ("", "needs a model_config_list"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_model_config(bad, "f.config")
    with pytest.raises(ValueError, match="cannot read the model config file"):
        read_model_config_file(str(tmp_path / "missing.config"))


# ---- version policies on a manager (stand-in loader, no TensorFlow) --------------------

class _Loaded:
    def __init__(self, name, version, path):
        self.name, self.version, self.path = name, version, path


def _manager(base: Path, policy, broken=()) -> ServableManager:
    def loader(name, version, path):
        if version in broken:
            raise ValueError("not a SavedModel")
        return _Loaded(name, version, path)
    parsed = parse_model_config(f"model_config_list {{ config {{ name: 'm' base_path: '{base}' "
                                f"{policy} }} }}")[0]
    return ServableManager("m", str(base), loader=loader, versions=parsed.policy,
                           policy=LoadPolicy(settle_seconds=0.0))


def _versions(base: Path, *versions: int) -> None:
    for v in versions:
        (base / str(v)).mkdir(exist_ok=True)
    old = time.time() - 60   # settled: loaded at the first poll
    for v in versions:
        os.utime(base / str(v), (old, old))


@pytest.mark.parametrize("policy, broken, expected", [
    ("", (), [4]),
    ("model_version_policy { latest { num_versions: 2 } }", (), [3, 4]),
    ("model_version_policy { latest { num_versions: 2 } }", (4,), [2, 3]),   # a failed one does not count
    ("model_version_policy { all {} }", (), [1, 2, 3, 4]),
    ("model_version_policy { specific { versions: 2 versions: 9 } }", (), [2]),
])
def test_version_policies_choose_what_is_loaded(tmp_path, policy, broken, expected):
    _versions(tmp_path, 1, 2, 3, 4)
    manager = _manager(tmp_path, policy, broken)
    manager.poll()
    assert manager.available_versions() == expected
    failed = {v for v, s in manager.statuses().items() if s.state == State.END}
    assert failed == set(broken)


def test_latest_two_keeps_serving_while_the_newest_fails_and_moves_on_when_it_loads(tmp_path):
    _versions(tmp_path, 1, 2)
    manager = _manager(tmp_path, "model_version_policy { latest { num_versions: 2 } }")
    manager.poll()
    assert manager.available_versions() == [1, 2]
    _versions(tmp_path, 3)
    manager.poll()
    assert manager.available_versions() == [2, 3]          # 1 unloaded once 3 was available
    assert manager.statuses()[1].state == State.END


# ---- labels ---------------------------------------------------------------------------

def _model_set(tmp_path, labels, allow_unavailable=False) -> tuple[ModelSet, ServableManager]:
    _versions(tmp_path, 1, 2, 3)
    manager = _manager(tmp_path, "model_version_policy { specific { versions: 1 versions: 2 } }")
    return ModelSet([manager], {"m": labels}, allow_unavailable=allow_unavailable), manager


def test_labels_resolve_to_their_versions_and_unknown_labels_are_invalid_argument(tmp_path):
    models, _ = _model_set(tmp_path, {"stable": 1, "canary": 2})
    models.poll()
    assert models.ready() and models.labels("m") == {"stable": 1, "canary": 2}
    with models.servable("m", label="canary") as servable:
        assert servable.version == 2
    with models.servable("m", label="stable") as servable:
        assert servable.version == 1
    with models.servable("m") as servable:
        assert servable.version == 2                        # no label: the latest
    with pytest.raises(ServingError) as err:
        models.resolve("m", None, "nope")
    assert (err.value.code, err.value.message) == (grpc.StatusCode.INVALID_ARGUMENT,
                                                   "Unrecognized servable version label: nope")
    with pytest.raises(ServingError) as err:                # labels belong to their model
        models.resolve("other", None, "stable")
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_labels_wait_for_available_versions_all_or_nothing(tmp_path):
    # Version 3 is not in the policy: it never becomes available, so no label is assigned.
    models, _ = _model_set(tmp_path, {"stable": 1, "canary": 3})
    models.poll()
    assert not models.update_labels() and not models.ready()
    with pytest.raises(ServingError) as err:
        models.resolve("m", None, "stable")
    assert err.value.message == "Unrecognized servable version label: stable"


def test_allow_unavailable_assigns_new_labels_to_versions_not_loaded(tmp_path):
    models, _ = _model_set(tmp_path, {"stable": 1, "canary": 3}, allow_unavailable=True)
    models.poll()
    assert models.labels("m") == {"stable": 1, "canary": 3}
    with pytest.raises(ServingError) as err:
        with models.servable("m", label="canary"):
            pass
    assert (err.value.code, err.value.message) == (grpc.StatusCode.NOT_FOUND,
                                                   "Servable not found for request: Specific(m, 3)")
