"""The InfraValidator's executor: writes the warm-up file into the validated copy of a
blessed candidate, serves that copy with `btmri serve --enable-batching`, runs the
checks (checks.py) and records the result on the InfraBlessing."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time

from tfx.components.evaluator import constants as evaluator_constants
from tfx.dsl.components.base import base_executor
from tfx.dsl.io import fileio
from tfx.types import artifact_utils
from tfx.utils import io_utils, path_utils

from btmri import spec
from btmri.documents import InfraValidation
from btmri.layout import INFRA_BLESSED_FILE, INFRA_NOT_BLESSED_FILE, WARMUP_PATH
from pipeline.infra_validator.checks import (
    REQUEST_TIMEOUT_SECONDS,
    SERVED_VERSION,
    Checks,
    check_answers,
    check_concurrent_clients,
    check_latency,
    check_rest_metadata,
    check_signature_contract,
    in_process_answers,
)
from pipeline.infra_validator.inputs import evaluated_images
from pipeline.infra_validator.warmup import WarmupFailed, warmup_logs, write_warmup

BLESSED_KEY = "blessed"  # what TFX's Pusher reads (tfx.components.util.model_utils.is_infra_validated)
VALIDATED_MODEL_KEY = "validated_model"  # output: the candidate + its warm-up file; the Pusher pushes it


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
    from serving.client import PredictionClient, RequestFailed, RestClient, RetryPolicy
    from components.training import compute_dtype
    from serving.process import ModelLoadFailed, ServerProcess

    started = time.monotonic()
    result = InfraValidation(
        validated=True, images=len(images), latency_requests=latency_requests, warmup_records=warmup_records
    )
    checks = Checks(result)
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
        # Its answers are compared with this process's to 1e-4: the same kernels.
        onednn=compute_dtype.onednn_enabled(),
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

        # One attempt per request: a validation reports a failure, it does not retry it.
        once = {"timeout": REQUEST_TIMEOUT_SECONDS, "retry": RetryPolicy(attempts=1)}
        with (
            PredictionClient(server.grpc_target, model_name, **once) as grpc_client,
            RestClient(server.rest_url, model_name, **once) as rest,
        ):
            served = grpc_client.signature_defs()
            result.signatures = sorted(k for k in served if not k.startswith("__"))
            expected = in_process_answers(model_dir, images)
            abstention = any(spec.OOD_SCORE in outputs for outputs in expected.values())
            check_signature_contract(checks, served, abstention)
            check_rest_metadata(checks, rest, served)
            check_answers(checks, grpc_client, rest, images, expected)
            if spec.PREDICT_IMAGES in expected:
                check_concurrent_clients(checks, grpc_client, rest, images, expected[spec.PREDICT_IMAGES])
            if spec.PREDICT_IMAGES in expected and latency_requests > 0:
                check_latency(checks, grpc_client, rest, images, latency_requests)
    except Exception as err:  # whatever else went wrong is a reason, not a crash
        detail = str(err) if isinstance(err, RequestFailed) else f"{type(err).__name__}: {err}"
        checks.add("validation", False, detail.splitlines()[0] if detail else type(err).__name__)
    finally:
        server.stop()
        result.seconds = round(time.monotonic() - started, 2)
    result.blessed = not result.reason
    return result


def not_validated(reason: str) -> InfraValidation:
    return InfraValidation(blessed=False, validated=False, reason=reason)


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
        except WarmupFailed as err:
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
