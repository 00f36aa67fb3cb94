"""The InfraValidator's checks of the served candidate, each recorded in the
InfraValidation document under its name: the signature contract (gRPC metadata), REST
metadata, every signature's answers over gRPC and REST, one-image requests from
concurrent clients through the server's batching, and the latency of one-image
`predict_images` requests. Requests go through serving.client's clients."""

from __future__ import annotations

import re
import time
import urllib.error
import urllib.request

import numpy as np

from btmri import spec
from btmri.documents import DEFAULT_MONITORING_PATH, InfraValidation
from pipeline.infra_validator.inputs import signature_inputs

REQUEST_TIMEOUT_SECONDS = 60.0  # one request of the validation
CONCURRENT_CLIENTS = 8  # threads sending one-image requests at once, for the batched path
CONCURRENT_REQUESTS = 32  # at least this many, the validation images repeated
SERVED_VERSION = 1  # the candidate's version in the temporary base path


class Checks:
    """The checks run so far, in the InfraValidation document; the first failure is its reason."""

    def __init__(self, result: InfraValidation):
        self.result = result

    def add(self, name: str, passed: bool, detail: str) -> None:
        self.result.checks.append({"name": name, "passed": bool(passed), "detail": detail})
        if not passed and not self.result.reason:
            self.result.reason = f"{name}: {detail}"


# ---- what is wrong -----------------------------------------------------------------------


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


# ---- answers -----------------------------------------------------------------------------


def in_process_answers(model_dir: str, images: list[bytes]) -> dict[str, dict[str, np.ndarray]]:
    """signature → outputs of the SavedModel called in this process: what the server
    must answer. Contract signatures the model lacks are left out."""
    import tensorflow as tf

    loaded = tf.saved_model.load(model_dir)
    expected = {}
    for signature in spec.SIGNATURE_CONTRACT:
        if signature in loaded.signatures:
            outputs = loaded.signatures[signature](
                **{k: tf.constant(v) for k, v in signature_inputs(signature, images).items()}
            )
            expected[signature] = {k: v.numpy() for k, v in outputs.items()}
    return expected


def grpc_answer(client, signature: str, images: list[bytes]) -> dict[str, np.ndarray]:
    import tensorflow as tf

    response = client.predict(signature, signature_inputs(signature, images))
    return {name: tf.make_ndarray(proto) for name, proto in response.outputs.items()}


def rest_answer(client, signature: str, images: list[bytes]) -> dict[str, np.ndarray]:
    ((_, values),) = signature_inputs(signature, images).items()
    rows = client.predict(signature, list(values), version=SERVED_VERSION)
    names = rows[0].keys() if rows and isinstance(rows[0], dict) else []
    return {name: np.array([row[name] for row in rows]) for name in names}


# ---- the checks --------------------------------------------------------------------------


def check_signature_contract(checks: Checks, served: dict, abstention: bool) -> None:
    problems = contract_problems(served, abstention)
    checks.add(
        "signature contract (gRPC metadata)",
        not problems,
        "; ".join(problems)
        or f"{', '.join(spec.SIGNATURE_CONTRACT)} as specified"
        + (" with the abstention outputs" if abstention else ""),
    )


def check_rest_metadata(checks: Checks, rest, served: dict) -> None:
    rest_meta = rest.request("GET", f"{rest.model_path}/metadata")
    rest_sigs = rest_meta["metadata"]["signature_def"]["signature_def"]
    same = {k: (sorted(v.get("inputs", {})), sorted(v.get("outputs", {}))) for k, v in rest_sigs.items()} == {
        k: (sorted(v.inputs), sorted(v.outputs)) for k, v in served.items()
    }
    checks.add(
        "REST metadata",
        same,
        "the same signatures, inputs and outputs as gRPC" if same else "REST metadata differs from gRPC's",
    )


def check_answers(checks: Checks, grpc_client, rest, images: list[bytes], expected: dict) -> None:
    """Every signature over gRPC and over REST answers as the model in process does."""
    from serving.client import RequestFailed, ServerUnavailable

    for signature, want in expected.items():
        for protocol, client, answer in (("gRPC", grpc_client, grpc_answer), ("REST", rest, rest_answer)):
            try:
                problems = answer_problems(
                    f"{signature} over {protocol}", answer(client, signature, images), want
                )
            except (RequestFailed, ServerUnavailable, KeyError, ValueError) as err:
                problems = [f"request failed: {err}"]
            checks.add(
                f"{signature} over {protocol}",
                not problems,
                "; ".join(problems) or f"{len(images)} images: the in-process answers",
            )


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


def check_concurrent_clients(checks: Checks, grpc_client, rest, images: list[bytes], want: dict) -> None:
    """Every image as its own one-image gRPC request, CONCURRENT_CLIENTS at a time: the
    server batches them together, and each answer must still be the in-process one."""
    from concurrent.futures import ThreadPoolExecutor

    from serving.client import RequestFailed, ServerUnavailable

    name = f"{spec.PREDICT_IMAGES}, {CONCURRENT_CLIENTS} concurrent clients (batched)"
    # Enough requests that the clients overlap, whatever the number of images.
    rounds = -(-CONCURRENT_REQUESTS // max(len(images), 1))
    want = {key: np.concatenate([value] * rounds) for key, value in want.items()}
    before = _batched_rows(rest.base_url)
    try:
        with ThreadPoolExecutor(CONCURRENT_CLIENTS) as pool:
            answers = list(
                pool.map(
                    lambda image: grpc_answer(grpc_client, spec.PREDICT_IMAGES, [image]), images * rounds
                )
            )
    except (RequestFailed, ServerUnavailable) as err:
        checks.add(name, False, f"request failed: {err}")
        return
    after = _batched_rows(rest.base_url)
    served = {key: np.concatenate([a[key] for a in answers]) for key in answers[0]} if answers else {}
    problems = answer_problems(name, served, want)
    detail = f"{len(images) * rounds} one-image requests: the in-process answers"
    if before and after and after[1] > before[1]:
        detail += f", {(after[0] - before[0]) / (after[1] - before[1]):.1f} images per model call"
    checks.add(name, not problems, "; ".join(problems) or detail)


def _time_requests(client, answer, images: list[bytes], count: int) -> tuple[float, float]:
    """(p50, p99) in ms of `count` one-image predict_images requests."""
    from serving.latency import p50_p99_ms

    seconds = []
    for i in range(count):
        start = time.perf_counter()
        answer(client, spec.PREDICT_IMAGES, [images[i % len(images)]])
        seconds.append(time.perf_counter() - start)
    return p50_p99_ms(seconds)


def check_latency(checks: Checks, grpc_client, rest, images: list[bytes], count: int) -> None:
    """Times `count` one-image predict_images requests per protocol into the document."""
    result = checks.result
    grpc_answer(grpc_client, spec.PREDICT_IMAGES, images[:1])  # connect, first call
    result.grpc_p50_ms, result.grpc_p99_ms = _time_requests(grpc_client, grpc_answer, images, count)
    result.rest_p50_ms, result.rest_p99_ms = _time_requests(rest, rest_answer, images, count)
    checks.add(
        "latency",
        True,
        f"{count} one-image {spec.PREDICT_IMAGES} requests per protocol: "
        f"gRPC p50 {result.grpc_p50_ms:.1f} ms, p99 {result.grpc_p99_ms:.1f} ms; "
        f"REST p50 {result.rest_p50_ms:.1f} ms, p99 {result.rest_p99_ms:.1f} ms",
    )
