"""`InfraValidator`: the candidate is served before it is pushed (TFX's InfraValidator
step, with `btmri serve` as the model server).

Runs after the Evaluator (and the LesionAudit, whose blessing then decides) and before
ModelReport and the Pusher (docs/architecture.md, Serving validation). For a blessed
candidate it:
1. copies the model into its `model` output and writes TF Serving's warm-up file
   (`assets.extra/tf_serving_warmup_requests`: one PredictionLog per signature and
   batch size in btmri.spec.WARMUP_BATCH_SIZES, built from images of the evaluated
   split) into the copy: the copy is what the Pusher pushes;
2. starts `btmri serve --enable-batching` in a subprocess on free loopback ports, on a
   copy of that model as version 1 of a temporary base path; the server replays the warm-up file
   and its canary before the version is AVAILABLE, and a version that fails to load
   ends the wait at once with the server's reason;
3. checks the served metadata (gRPC GetModelMetadata, REST /metadata) against the
   signature contract (btmri.spec.SIGNATURE_CONTRACT);
4. sends images of the evaluated split to every signature over gRPC and REST and
   checks the answers equal the in-process SavedModel's (spec.ANSWER_TOLERANCE);
5. sends the same images again as one-image gRPC requests from 8 threads at once:
   the server runs with `--enable-batching`, as production does, so these are merged
   into batches, and every answer must still be the in-process one;
6. times one-image `predict_images` requests per protocol (p50/p99);
7. stops the server (SIGTERM, then SIGKILL; always, in `finally`).
Every wait has a timeout; any failure, the server's included, makes the blessing
false with the reason, never a hung or failed pipeline.

Outputs: `blessing` (InfraBlessing: custom property `blessed` 1/0, as TFX's Pusher
reads it, `reason`, the latency figures; infra_validation.json and TFX's
INFRA_BLESSED / INFRA_NOT_BLESSED marker) and `validated_model` (the validated copy).
An unblessed candidate is not served (blessing false, "not validated: ...") and its
`validated_model` output stays empty.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import tempfile
import time
import urllib.error
import urllib.request
from base64 import b64encode

import numpy as np
from tfx import types
from tfx.components.evaluator import constants as evaluator_constants
from tfx.dsl.components.base import base_component, base_executor, executor_spec
from tfx.dsl.io import fileio
from tfx.types import artifact_utils, standard_artifacts
from tfx.types.component_spec import ChannelParameter, ExecutionParameter
from tfx.utils import io_utils, path_utils

from btmri import spec
from btmri.documents import DEFAULT_MONITORING_PATH, InfraValidation
from btmri.layout import INFRA_BLESSED_FILE, INFRA_NOT_BLESSED_FILE, WARMUP_DIR, WARMUP_PATH

BLESSED_KEY = "blessed"  # what TFX's Pusher reads (tfx.components.util.model_utils.is_infra_validated)
REQUEST_TIMEOUT_SECONDS = 60.0  # one request of the validation
CONCURRENT_CLIENTS = 8  # threads sending one-image requests at once, for the batched path
CONCURRENT_REQUESTS = 32  # at least this many, the validation images repeated
SERVED_VERSION = 1  # the candidate's version in the temporary base path
VALIDATED_MODEL_KEY = "validated_model"  # output: the candidate + its warm-up file; the Pusher pushes it


class ValidationFailed(Exception):
    """One step of the validation failed; the message is the reason."""


# ---- inputs: images of the evaluated split ---------------------------------------------


def evaluated_images(examples_uri: str, split: str, count: int) -> list[bytes]:
    """The first `count` encoded images of a split of an Examples artifact (fewer if
    the split is smaller)."""
    import tensorflow as tf

    from components.audit.component import split_files

    images: list[bytes] = []
    for path in split_files(examples_uri, split):
        compression = "GZIP" if path.endswith(".gz") else ""
        for record in tf.data.TFRecordDataset(path, compression_type=compression):
            feature = tf.train.Example.FromString(record.numpy()).features.feature[spec.IMAGE_KEY]
            if feature.bytes_list.value:
                images.append(feature.bytes_list.value[0])
            if len(images) >= count:
                return images
    return images


def signature_inputs(signature: str, images: list[bytes]) -> dict[str, np.ndarray]:
    """The one input of a contract signature for these images."""
    from data_prep.tfrecords import request_example  # TensorFlow only when a request is built

    alias = spec.SIGNATURE_CONTRACT[signature][0]
    values = [request_example(i) for i in images] if alias == spec.EXAMPLES_INPUT else list(images)
    return {alias: np.array(values, dtype=object)}


# ---- the warm-up file ------------------------------------------------------------------


def warmup_logs(
    images: list[bytes], model_name: str = spec.MODEL_NAME, batch_sizes=spec.WARMUP_BATCH_SIZES
) -> list:
    """PredictionLogs: one Predict request per signature and batch size (images repeated
    when the split has fewer)."""
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    if not images:
        raise ValidationFailed("the evaluated split has no images to build requests from")
    logs = []
    for signature in spec.SIGNATURE_CONTRACT:
        for size in batch_sizes:
            batch = [images[i % len(images)] for i in range(size)]
            log = prediction_log_pb2.PredictionLog()
            request = log.predict_log.request
            request.model_spec.name = model_name
            request.model_spec.signature_name = signature
            for alias, array in signature_inputs(signature, batch).items():
                request.inputs[alias].CopyFrom(tf.make_tensor_proto(array))
            logs.append(log)
    if len(logs) > spec.MAX_WARMUP_RECORDS:
        raise ValidationFailed(
            f"{len(logs)} warm-up records: TF Serving reads at most {spec.MAX_WARMUP_RECORDS}"
        )
    return logs


def write_warmup(model_dir: str, logs) -> str:
    """Writes the TFRecord of PredictionLogs into `model_dir`/assets.extra/."""
    import tensorflow as tf

    fileio.makedirs(os.path.join(model_dir, WARMUP_DIR))
    path = os.path.join(model_dir, WARMUP_PATH)
    with tf.io.TFRecordWriter(path) as writer:
        for log in logs:
            writer.write(log.SerializeToString())
    return path


# ---- checks ----------------------------------------------------------------------------


def contract_problems(signature_defs: dict, abstention: bool) -> list[str]:
    """What the served SignatureDefs lack of the serving contract (empty: none)."""
    problems = []
    for name, (alias, dtype, outputs) in spec.SIGNATURE_CONTRACT.items():
        sig = signature_defs.get(name)
        if sig is None:
            problems.append(f"signature {name} is not served")
            continue
        if set(sig.inputs) != {alias}:
            problems.append(f"{name} takes {sorted(sig.inputs)}, the contract says [{alias!r}]")
        else:
            from tensorflow.core.framework import types_pb2

            got = types_pb2.DataType.Name(sig.inputs[alias].dtype)
            if got != dtype:
                problems.append(f"{name} input {alias} is {got}, the contract says {dtype}")
        wanted = list(outputs) + (list(spec.ABSTENTION_OUTPUTS) if abstention else [])
        missing = [o for o in wanted if o not in sig.outputs]
        if missing:
            problems.append(f"{name} lacks outputs {missing}")
    return problems


def answer_problems(where: str, served: dict, expected: dict[str, np.ndarray]) -> list[str]:
    """Where served outputs differ from the in-process ones (empty: they agree)."""
    problems = []
    for name, want in expected.items():
        if name not in served:
            problems.append(f"{where}: no {name} in the answer")
            continue
        got = np.asarray(served[name])
        if want.dtype.kind in "OSU":  # strings: bytes in process and over gRPC, text over REST
            want = np.array(
                [w.decode() if isinstance(w, bytes) else w for w in want.reshape(-1)], dtype=object
            ).reshape(want.shape)
            got = np.array(
                [g.decode() if isinstance(g, bytes) else g for g in got.reshape(-1)], dtype=object
            ).reshape(got.shape)
        if got.shape != want.shape:
            problems.append(f"{where}: {name} has shape {list(got.shape)}, in process {list(want.shape)}")
        elif want.dtype.kind == "f":
            diff = float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64)), initial=0.0))
            if not np.allclose(got, want, rtol=spec.ANSWER_TOLERANCE, atol=spec.ANSWER_TOLERANCE):
                problems.append(f"{name} differs from the in-process answer by up to {diff:.3g} ({where})")
        elif not np.array_equal(got, want):
            problems.append(
                f"{name} differs from the in-process answer ({where}): "
                f"{got.reshape(-1)[:4].tolist()} vs {want.reshape(-1)[:4].tolist()}"
            )
    return problems


# ---- talking to the server -------------------------------------------------------------


def _grpc_predict(stub, model_name: str, signature: str, inputs: dict[str, np.ndarray]) -> dict:
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature
    for alias, array in inputs.items():
        request.inputs[alias].CopyFrom(tf.make_tensor_proto(array))
    response = stub.Predict(request, timeout=REQUEST_TIMEOUT_SECONDS)
    return {name: tf.make_ndarray(proto) for name, proto in response.outputs.items()}


def _rest(method: str, url: str, document: dict | None = None) -> dict:
    data = None if document is None else json.dumps(document).encode()
    request = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_SECONDS) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as err:
        body = err.read().decode(errors="replace")
        raise ValidationFailed(
            f"REST {method} {url.split('/v1/', 1)[-1]}: HTTP {err.code} {body[:300]}"
        ) from None


def _rest_predict(base_url: str, model_name: str, signature: str, inputs: dict[str, np.ndarray]) -> dict:
    ((alias, array),) = inputs.items()
    document = {
        "signature_name": signature,
        "instances": [{"b64": b64encode(value).decode("ascii")} for value in array],
    }
    answer = _rest("POST", f"{base_url}/v1/models/{model_name}/versions/{SERVED_VERSION}:predict", document)
    rows = answer["predictions"]
    names = rows[0].keys() if rows and isinstance(rows[0], dict) else []
    return {name: np.array([row[name] for row in rows]) for name in names}


def _percentiles(seconds: list[float]) -> tuple[float, float]:
    ordered = sorted(seconds)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    return 1000 * statistics.median(ordered), 1000 * p99


def _time_requests(call, images: list[bytes], count: int) -> tuple[float, float]:
    seconds = []
    for i in range(count):
        start = time.perf_counter()
        call(images[i % len(images)])
        seconds.append(time.perf_counter() - start)
    return _percentiles(seconds)


def _batched_rows(rest_url: str) -> tuple[float, float] | None:
    """(rows, model calls) the server's batching has run so far, from its Prometheus
    page (btmri_serving_batch_size); None if the page does not say."""
    try:
        with urllib.request.urlopen(
            f"{rest_url}{DEFAULT_MONITORING_PATH}", timeout=REQUEST_TIMEOUT_SECONDS
        ) as r:
            text = r.read().decode()
    except (urllib.error.URLError, OSError):
        return None
    found = dict(re.findall(r"^btmri_serving_batch_size_(sum|count) ([0-9.eE+]+)$", text, re.M))
    return (float(found["sum"]), float(found["count"])) if len(found) == 2 else None


def _concurrent_check(stub, rest_url: str, model_name: str, images: list[bytes], want: dict):
    """Every image as its own one-image gRPC request, CONCURRENT_CLIENTS at a time: the
    server batches them together, and each answer must still be the in-process one.
    Returns (check name, passed, detail)."""
    import grpc
    from concurrent.futures import ThreadPoolExecutor

    name = f"{spec.PREDICT_IMAGES}, {CONCURRENT_CLIENTS} concurrent clients (batched)"

    def one(image: bytes) -> dict:
        inputs = signature_inputs(spec.PREDICT_IMAGES, [image])
        return _grpc_predict(stub, model_name, spec.PREDICT_IMAGES, inputs)

    # Enough requests that the clients overlap, whatever the number of images.
    rounds = -(-CONCURRENT_REQUESTS // max(len(images), 1))
    want = {key: np.concatenate([value] * rounds) for key, value in want.items()}
    before = _batched_rows(rest_url)
    try:
        with ThreadPoolExecutor(CONCURRENT_CLIENTS) as pool:
            answers = list(pool.map(one, images * rounds))
    except grpc.RpcError as err:
        return name, False, f"request failed: {err.code().name}: {err.details()}"
    after = _batched_rows(rest_url)
    served = {key: np.concatenate([a[key] for a in answers]) for key in answers[0]} if answers else {}
    problems = answer_problems(name, served, want)
    detail = f"{len(images) * rounds} one-image requests: the in-process answers"
    if before and after and after[1] > before[1]:
        detail += f", {(after[0] - before[0]) / (after[1] - before[1]):.1f} images per model call"
    return name, not problems, "; ".join(problems) or detail


# ---- the validation --------------------------------------------------------------------


class _Checks:
    def __init__(self, result: InfraValidation):
        self.result = result

    def add(self, name: str, passed: bool, detail: str) -> None:
        self.result.checks.append({"name": name, "passed": bool(passed), "detail": detail})
        if not passed and not self.result.reason:
            self.result.reason = f"{name}: {detail}"


def validate_serving(
    model_dir: str,
    images: list[bytes],
    work_dir: str,
    warmup_records: int = 0,
    model_name: str = spec.MODEL_NAME,
    latency_requests: int = spec.LATENCY_REQUESTS,
    startup_timeout: float = spec.VALIDATION_TIMEOUT_SECONDS,
) -> InfraValidation:
    """Serves `model_dir` (which holds its warm-up file) with `btmri serve` and checks it;
    never raises for a model or server fault: the result says why it is not blessed."""
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import get_model_metadata_pb2, prediction_service_pb2_grpc

    from serving.process import ModelLoadFailed, ServerProcess

    started = time.monotonic()
    result = InfraValidation(
        validated=True, images=len(images), latency_requests=latency_requests, warmup_records=warmup_records
    )
    checks = _Checks(result)
    base = os.path.join(work_dir, model_name)
    shutil.copytree(model_dir, os.path.join(base, str(SERVED_VERSION)))
    server = ServerProcess(
        base,
        "--enable-batching",  # as production serves it (serving/config/batching.config)
        "--poll-seconds",
        "0.2",
        "--max-load-retries",
        "0",
        model_name=model_name,
        log_path=os.path.join(work_dir, "serve.log"),
        startup_timeout=startup_timeout,
        fail_on_load_error=True,
    )
    try:
        t0 = time.monotonic()
        try:
            server.start()
        except ModelLoadFailed as err:
            checks.add("server start", False, str(err))
            return result
        except Exception as err:  # never ready, or could not start at all
            tail = " | ".join(line.strip() for line in server.log_text().splitlines()[-5:])
            checks.add("server start", False, f"{str(err).splitlines()[0]} (server log: {tail})")
            return result
        result.startup_seconds = round(time.monotonic() - t0, 2)
        replayed = re.findall(r"replayed (\d+) warm-up requests", server.log_text())
        result.warmup_replayed = int(replayed[-1]) if replayed else 0
        checks.add(
            "server start",
            result.warmup_replayed == result.warmup_records,
            f"version {SERVED_VERSION} AVAILABLE after {result.startup_seconds:.1f} s; "
            f"{result.warmup_replayed} of {result.warmup_records} warm-up requests replayed",
        )

        with grpc.insecure_channel(server.grpc_target) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
            request.model_spec.name = model_name
            metadata = stub.GetModelMetadata(request, timeout=REQUEST_TIMEOUT_SECONDS)
            signature_map = get_model_metadata_pb2.SignatureDefMap()
            metadata.metadata["signature_def"].Unpack(signature_map)
            served = dict(signature_map.signature_def)
            result.signatures = sorted(k for k in served if not k.startswith("__"))

            loaded = tf.saved_model.load(model_dir)
            expected = {}
            for signature in spec.SIGNATURE_CONTRACT:
                if signature in loaded.signatures:
                    outputs = loaded.signatures[signature](
                        **{k: tf.constant(v) for k, v in signature_inputs(signature, images).items()}
                    )
                    expected[signature] = {k: v.numpy() for k, v in outputs.items()}
            abstention = any(spec.OOD_SCORE in outputs for outputs in expected.values())
            problems = contract_problems(served, abstention)
            checks.add(
                "signature contract (gRPC metadata)",
                not problems,
                "; ".join(problems)
                or f"{', '.join(spec.SIGNATURE_CONTRACT)} as specified"
                + (" with the abstention outputs" if abstention else ""),
            )
            rest_meta = _rest("GET", f"{server.rest_url}/v1/models/{model_name}/metadata")
            rest_sigs = rest_meta["metadata"]["signature_def"]["signature_def"]
            same = {
                k: (sorted(v.get("inputs", {})), sorted(v.get("outputs", {}))) for k, v in rest_sigs.items()
            } == {k: (sorted(v.inputs), sorted(v.outputs)) for k, v in served.items()}
            checks.add(
                "REST metadata",
                same,
                "the same signatures, inputs and outputs as gRPC"
                if same
                else "REST metadata differs from gRPC's",
            )

            for signature, want in expected.items():
                inputs = signature_inputs(signature, images)
                for protocol, call in (
                    ("gRPC", lambda s=signature, i=inputs: _grpc_predict(stub, model_name, s, i)),
                    ("REST", lambda s=signature, i=inputs: _rest_predict(server.rest_url, model_name, s, i)),
                ):
                    try:
                        problems = answer_problems(f"{signature} over {protocol}", call(), want)
                    except (grpc.RpcError, ValidationFailed, KeyError, ValueError) as err:
                        detail = (
                            f"{err.code().name}: {err.details()}"
                            if isinstance(err, grpc.RpcError)
                            else str(err)
                        )
                        problems = [f"request failed: {detail}"]
                    checks.add(
                        f"{signature} over {protocol}",
                        not problems,
                        "; ".join(problems) or f"{len(images)} images: the in-process answers",
                    )

            if spec.PREDICT_IMAGES in expected:
                want = expected[spec.PREDICT_IMAGES]
                checks.add(*_concurrent_check(stub, server.rest_url, model_name, images, want))

            if spec.PREDICT_IMAGES in expected and latency_requests > 0:
                one = signature_inputs(spec.PREDICT_IMAGES, images[:1])  # connect, first call
                _grpc_predict(stub, model_name, spec.PREDICT_IMAGES, one)
                result.grpc_p50_ms, result.grpc_p99_ms = _time_requests(
                    lambda image: _grpc_predict(
                        stub, model_name, spec.PREDICT_IMAGES, signature_inputs(spec.PREDICT_IMAGES, [image])
                    ),
                    images,
                    latency_requests,
                )
                result.rest_p50_ms, result.rest_p99_ms = _time_requests(
                    lambda image: _rest_predict(
                        server.rest_url,
                        model_name,
                        spec.PREDICT_IMAGES,
                        signature_inputs(spec.PREDICT_IMAGES, [image]),
                    ),
                    images,
                    latency_requests,
                )
                checks.add(
                    "latency",
                    True,
                    f"{latency_requests} one-image {spec.PREDICT_IMAGES} requests per protocol: "
                    f"gRPC p50 {result.grpc_p50_ms:.1f} ms, p99 {result.grpc_p99_ms:.1f} ms; "
                    f"REST p50 {result.rest_p50_ms:.1f} ms, p99 {result.rest_p99_ms:.1f} ms",
                )
    except Exception as err:  # whatever else went wrong is a reason, not a crash
        detail = (
            f"{err.code().name}: {err.details()}"
            if hasattr(err, "code") and callable(err.code) and hasattr(err, "details")
            else f"{type(err).__name__}: {err}"
        )
        checks.add("validation", False, detail.splitlines()[0] if detail else type(err).__name__)
    finally:
        server.stop()
        result.seconds = round(time.monotonic() - started, 2)
    result.blessed = not result.reason
    return result


def not_validated(reason: str) -> InfraValidation:
    return InfraValidation(blessed=False, validated=False, reason=reason)


# ---- the TFX component -----------------------------------------------------------------


class InfraValidatorSpec(types.ComponentSpec):
    PARAMETERS = {
        "evaluated_split": ExecutionParameter(type=str),
        "latency_requests": ExecutionParameter(type=int),
    }
    INPUTS = {
        "model": ChannelParameter(type=standard_artifacts.Model),
        "examples": ChannelParameter(type=standard_artifacts.Examples),
        "model_blessing": ChannelParameter(type=standard_artifacts.ModelBlessing, optional=True),
    }
    OUTPUTS = {
        "blessing": ChannelParameter(type=standard_artifacts.InfraBlessing),
        VALIDATED_MODEL_KEY: ChannelParameter(type=standard_artifacts.Model),
    }


def record(blessing, result: InfraValidation) -> None:
    """infra_validation.json, TFX's marker file and custom properties on the InfraBlessing."""
    fileio.makedirs(blessing.uri)
    result.write(blessing.uri)
    marker = INFRA_BLESSED_FILE if result.blessed else INFRA_NOT_BLESSED_FILE
    io_utils.write_string_file(os.path.join(blessing.uri, marker), "")
    blessing.set_int_custom_property(BLESSED_KEY, int(result.blessed))
    blessing.set_string_custom_property("reason", result.reason)
    for key in ("grpc_p50_ms", "grpc_p99_ms", "rest_p50_ms", "rest_p99_ms", "startup_seconds"):
        value = getattr(result, key)
        if value is not None:
            blessing.set_float_custom_property(key, float(value))


class InfraValidatorExecutor(base_executor.BaseExecutor):
    def Do(self, input_dict, output_dict, exec_properties):
        model = artifact_utils.get_single_instance(input_dict["model"])
        examples = artifact_utils.get_single_instance(input_dict["examples"])
        blessing = artifact_utils.get_single_instance(output_dict["blessing"])
        validated = artifact_utils.get_single_instance(output_dict[VALIDATED_MODEL_KEY])
        upstream = input_dict.get("model_blessing") or []
        if upstream and not artifact_utils.get_single_instance(upstream).get_int_custom_property(
            evaluator_constants.ARTIFACT_PROPERTY_BLESSED_KEY
        ):
            record(blessing, not_validated("not validated: the model was not blessed"))
            return
        started = time.monotonic()
        target = path_utils.serving_model_path(validated.uri)
        io_utils.copy_dir(
            path_utils.serving_model_path(model.uri, path_utils.is_old_model_artifact(model)), target
        )
        split = exec_properties["evaluated_split"]
        try:
            images = evaluated_images(
                examples.uri, split, max(spec.VALIDATION_IMAGES, max(spec.WARMUP_BATCH_SIZES))
            )
            logs = warmup_logs(images)
            write_warmup(target, logs)
        except ValidationFailed as err:
            record(blessing, not_validated(f"warm-up file: {err}"))
            return
        with tempfile.TemporaryDirectory(prefix="btmri-infra-") as work:
            result = validate_serving(
                target,
                images[: spec.VALIDATION_IMAGES],
                work,
                len(logs),
                latency_requests=int(exec_properties["latency_requests"]),
            )
        result.checks.insert(
            0,
            {
                "name": "warm-up file",
                "passed": True,
                "detail": f"{len(logs)} PredictionLogs ({len(spec.SIGNATURE_CONTRACT)} "
                f"signatures x batch sizes {list(spec.WARMUP_BATCH_SIZES)}) "
                f"from the {split} split in {WARMUP_PATH}",
            },
        )
        result.seconds = round(time.monotonic() - started, 2)
        record(blessing, result)


class InfraValidator(base_component.BaseComponent):
    SPEC_CLASS = InfraValidatorSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(InfraValidatorExecutor)

    def __init__(
        self,
        model,
        examples,
        evaluated_split: str,
        model_blessing=None,
        latency_requests: int = spec.LATENCY_REQUESTS,
    ):
        component_spec = InfraValidatorSpec(
            model=model,
            examples=examples,
            model_blessing=model_blessing,
            evaluated_split=evaluated_split,
            latency_requests=int(latency_requests),
            blessing=types.Channel(type=standard_artifacts.InfraBlessing),
            validated_model=types.Channel(type=standard_artifacts.Model),
        )
        super().__init__(spec=component_spec)
