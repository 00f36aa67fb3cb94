"""Several models, version policies and version labels (TF Serving's ModelServerConfig,
`btmri serve --model-config-file`).

Units first (the config reader, the policies on a manager with a stand-in loader, the
label map), then `btmri serve` in a subprocess on copies of the tiny pipeline model:
labels resolved over gRPC and REST, unknown labels refused with TF Serving's code and
text, `btmri predict --label`."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import grpc
import pytest

from btmri import spec
from serving.errors import ServingError
from serving.manager import LoadPolicy, ServableManager, State
from serving.model_config import ALL, LATEST, SPECIFIC, parse_model_config, read_model_config_file
from serving.models import ModelSet
from serving.process import ServerProcess
from serving.requests import predict_request
from tests.serving.test_serving import rest

REPO = Path(__file__).resolve().parents[2]
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
    assert b.base_path == os.path.abspath("rel/b")  # relative to the current folder
    assert c.policy.kind == ALL
    assert (d.policy.kind, d.policy.versions, d.labels) == (SPECIFIC, (5, 7), {"stable": 5, "canary": 7})

    for bad, message in [
        (
            "model_config_list { config { name: 'a' base_path: '/x' } config { name: 'a' base_path: '/y' } }",
            "Illegal to list model a multiple times in config list",
        ),
        (
            "model_config_list { config { name: 'a' base_path: '/x' model_platform: 'pytorch' } }",
            "requested unsupported platform pytorch",
        ),
        ("model_config_list { config { name: 'a' } }", "no base_path"),
        (
            "model_config_list { config { name: 'a' base_path: '/x' model_version_policy { specific {} } } }",
            "lists no versions",
        ),
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

    parsed = parse_model_config(
        f"model_config_list {{ config {{ name: 'm' base_path: '{base}' {policy} }} }}"
    )[0]
    return ServableManager(
        "m", str(base), loader=loader, versions=parsed.policy, policy=LoadPolicy(settle_seconds=0.0)
    )


def _versions(base: Path, *versions: int) -> None:
    for v in versions:
        (base / str(v)).mkdir(exist_ok=True)
    old = time.time() - 60  # settled: loaded at the first poll
    for v in versions:
        os.utime(base / str(v), (old, old))


@pytest.mark.parametrize(
    "policy, broken, expected",
    [
        ("", (), [4]),
        ("model_version_policy { latest { num_versions: 2 } }", (), [3, 4]),
        ("model_version_policy { latest { num_versions: 2 } }", (4,), [2, 3]),  # a failed one does not count
        ("model_version_policy { all {} }", (), [1, 2, 3, 4]),
        ("model_version_policy { specific { versions: 2 versions: 9 } }", (), [2]),
    ],
)
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
    assert manager.available_versions() == [2, 3]  # 1 unloaded once 3 was available
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
        assert servable.version == 2  # no label: the latest
    with pytest.raises(ServingError) as err:
        models.resolve("m", None, "nope")
    assert (err.value.code, err.value.message) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "Unrecognized servable version label: nope",
    )
    with pytest.raises(ServingError) as err:  # labels belong to their model
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
    assert (err.value.code, err.value.message) == (
        grpc.StatusCode.NOT_FOUND,
        "Servable not found for request: Specific(m, 3)",
    )


# ---- `btmri serve --model-config-file` on the tiny pipeline model ---------------------

STABLE, CANARY, NOT_IN_POLICY, SECOND = 1, 2, 3, 5


@pytest.fixture(scope="module")
def server(model, tmp_path_factory):
    """brain_tumor: versions 1, 2 and 3 on disk, the policy serves 1 and 2, labelled
    stable and canary; a second model serves every version of its own base path."""
    root = tmp_path_factory.mktemp("labels")
    for name, versions in (("brain_tumor", (STABLE, CANARY, NOT_IN_POLICY)), ("second", (SECOND,))):
        (root / name).mkdir()
        for v in versions:
            os.symlink(model, root / name / str(v))
    config = root / "models.config"
    config.write_text(f"""model_config_list {{
      config {{ name: "brain_tumor" base_path: "{root / "brain_tumor"}" model_platform: "tensorflow"
        model_version_policy {{ specific {{ versions: {STABLE} versions: {CANARY} }} }}
        version_labels {{ key: "stable" value: {STABLE} }}
        version_labels {{ key: "canary" value: {CANARY} }} }}
      config {{ name: "second" base_path: "{root / "second"}" model_version_policy {{ all {{}} }} }}
    }}""")
    with ServerProcess(
        None,
        "--model-config-file",
        str(config),
        "--poll-seconds",
        "0.2",
        "--model-config-file-poll-wait-seconds",
        "0.2",
        log_path=root / "server.log",
    ) as process:
        process.config_path = config
        deadline = time.monotonic() + 120
        while "version labels of brain_tumor" not in process.log_text():
            assert time.monotonic() < deadline, process.log_text()[-2000:]
            time.sleep(0.2)
        yield process


@pytest.fixture(scope="module")
def image(tiny_run) -> bytes:
    return next((tiny_run / "data" / "synthetic" / "Testing").glob("*/*.png")).read_bytes()


def _predict(server, image: bytes, name="brain_tumor", label=None, version=None):
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    request = predict_request(
        spec.PREDICT_IMAGES,
        {spec.IMAGE_BYTES_INPUT: [image]},
        model_name=name,
        version=version,
        version_label=label,
    )
    with grpc.insecure_channel(server.grpc_target) as channel:
        return prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=60)


def test_grpc_labels_resolve_and_unknown_labels_are_refused_as_tf_serving_does(server, image):
    assert _predict(server, image, label="canary").model_spec.version.value == CANARY
    assert _predict(server, image, label="stable").model_spec.version.value == STABLE
    assert _predict(server, image).model_spec.version.value == CANARY  # no label: the latest
    with pytest.raises(grpc.RpcError) as err:
        _predict(server, image, label="beta")
    assert (err.value.code(), err.value.details()) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "Unrecognized servable version label: beta",
    )
    with pytest.raises(grpc.RpcError) as err:  # labels belong to their model
        _predict(server, image, name="second", label="stable")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as err:  # on disk, outside the policy
        _predict(server, image, version=NOT_IN_POLICY)
    assert (err.value.code(), err.value.details()) == (
        grpc.StatusCode.NOT_FOUND,
        f"Servable not found for request: Specific(brain_tumor, {NOT_IN_POLICY})",
    )
    assert _predict(server, image, name="second").model_spec.version.value == SECOND


def test_rest_labels_paths(server, image):
    import base64

    document = {"signature_name": "predict_images", "instances": [{"b64": base64.b64encode(image).decode()}]}
    code, answer = rest(server, "POST", "/v1/models/brain_tumor/labels/stable:predict", document)
    assert code == 200 and len(answer["predictions"]) == 1
    code, status = rest(server, "GET", "/v1/models/brain_tumor/labels/stable")
    assert code == 200
    assert [(s["version"], s["state"]) for s in status["model_version_status"]] == [
        (str(STABLE), "AVAILABLE")
    ]
    code, status = rest(server, "GET", "/v1/models/brain_tumor")
    assert sorted(int(s["version"]) for s in status["model_version_status"]) == [STABLE, CANARY]
    code, metadata = rest(server, "GET", "/v1/models/brain_tumor/labels/canary/metadata")
    assert code == 200 and metadata["model_spec"]["version"] == str(CANARY)
    code, error = rest(server, "POST", "/v1/models/brain_tumor/labels/beta:predict", document)
    assert (code, error) == (400, {"error": "Unrecognized servable version label: beta"})


def test_btmri_predict_targets_a_label(server, tiny_run, capsys):
    from pipeline.cli import main as btmri

    path = str(next((tiny_run / "data" / "synthetic" / "Testing").glob("*/*.png")))
    capsys.readouterr()
    assert btmri(["predict", "--server", server.grpc_target, "--label", "stable", path]) == 0
    assert btmri(["predict", "--rest", server.rest_url, "--label", "canary", path]) == 0
    grpc_line, rest_line = (json.loads(line) for line in capsys.readouterr().out.splitlines())
    assert (grpc_line["model_version"], rest_line["model_version"]) == (STABLE, CANARY)
    assert btmri(["predict", "--server", server.grpc_target, "--label", "beta", path]) == 2
    assert "Unrecognized servable version label: beta" in capsys.readouterr().out


def test_promoting_the_canary_by_editing_the_config(server, image):
    """The workflow of docs/labels-canaries.md: stable moves to the canary's version, the canary label goes,
    the old version leaves the policy and is unloaded; read from the edited file while
    serving (--model-config-file-poll-wait-seconds)."""
    config = server.config_path
    text = config.read_text()
    promoted = (
        text.replace(f"versions: {STABLE} versions: {CANARY}", f"versions: {CANARY}")
        .replace(f'key: "stable" value: {STABLE}', f'key: "stable" value: {CANARY}')
        .replace(f'version_labels {{ key: "canary" value: {CANARY} }}', "")
    )
    assert promoted.count("version_labels") == 1
    config.write_text(promoted)
    deadline = time.monotonic() + 120
    while _predict(server, image, label="stable").model_spec.version.value != CANARY:
        assert time.monotonic() < deadline, server.log_text()[-2000:]
        time.sleep(0.2)
    with pytest.raises(grpc.RpcError) as err:
        _predict(server, image, label="canary")
    assert err.value.details() == "Unrecognized servable version label: canary"
    while rest(server, "GET", "/v1/models/brain_tumor")[1]["model_version_status"][-1]["state"] != "END":
        assert time.monotonic() < deadline, server.log_text()[-2000:]
        time.sleep(0.2)
    states = {
        int(s["version"]): s["state"]
        for s in rest(server, "GET", "/v1/models/brain_tumor")[1]["model_version_status"]
    }
    assert states == {STABLE: "END", CANARY: "AVAILABLE"}
    assert "model config" in server.log_text() and "changed: applying it" in server.log_text()
