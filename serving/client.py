"""Clients of a TF Serving model server (the official one or `btmri serve`).

`PredictionClient` speaks gRPC through the official stubs; `RestClient` the REST
API. Both send encoded image bytes (preprocessing lives in the model), retry
UNAVAILABLE with exponential backoff and raise `ServerUnavailable` when the server
cannot be reached at all.

`image_payload` turns an image file into the bytes to send: the model reads JPEG
and PNG only, so DICOM, TIFF and BMP (and CMYK JPEGs, 16-bit or alpha PNGs) are
converted with the very code `btmri prepare` uses (data_prep.image_io), and the
served model sees what it was trained on.
"""

from __future__ import annotations

import base64
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import get_model_metadata_pb2, predict_pb2, prediction_service_pb2_grpc

from btmri import spec
from btmri.documents import MAX_MESSAGE_MB, REQUEST_TIMEOUT_SECONDS
from btmri.spec import CLASS_NAMES
from data_prep import image_io
from serving.requests import predict_request


class ConversionFailed(ValueError):
    """A DICOM, TIFF or BMP file that cannot be converted; str(err) is the reason."""


_MODEL_READS = (image_io.JPEG_MAGIC, image_io.PNG_MAGIC)


def image_payload(data: bytes, name: str = "") -> bytes:
    """The bytes to send for one image file: what `btmri prepare` would store for it.

    - JPEG / PNG content: prepare's bytes (the file itself when it is a plain 8-bit
      JPEG/PNG, else prepare's 8-bit PNG: CMYK, 16-bit, alpha). When prepare refuses
      it (damaged, too large), the file goes as it is and the model's own checks
      answer (INVALID_ARGUMENT naming the reason).
    - DICOM, TIFF, BMP (by content, DICOM also by a .dcm name): converted to 8-bit
      PNG exactly as prepare does (DICOM windowing, 16-bit stretch, alpha), within
      prepare's pixel budget; ConversionFailed when that is impossible.
    - anything else goes as it is; the model refuses it (INVALID_ARGUMENT).
    """
    suffix = Path(name).suffix.lower()
    converts = (
        data.startswith(_MODEL_READS)
        or data[128:132] == b"DICM"
        or suffix == ".dcm"
        or data.startswith(image_io.BMP_MAGIC)
        or data[:4] in image_io.TIFF_MAGICS
    )
    if not converts:
        return data
    try:
        return image_io.decode_image(data, suffix).encoded
    except image_io.ImageError as err:
        if data.startswith(_MODEL_READS):
            return data
        raise ConversionFailed(f"cannot convert {suffix or 'file'} to PNG: {err}") from None


class ServerUnavailable(RuntimeError):
    """The server did not answer (down, wrong address, or unreachable) after all retries."""


def unavailable_message(prog: str, err: ServerUnavailable) -> str:
    """What a command prints when no server answers: the error and what to do."""
    return (
        f"{prog}: error: {err}\n(is the server running? `btmri serve` serves the work folder's pushed "
        "model; `btmri serve --model-base-path DIR` another one)"
    )


class RequestFailed(RuntimeError):
    """The server answered with an error status."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True)
class RetryPolicy:
    # Bounded by the caller's timeout rather than a count: a server started a moment ago
    # (`btmri serve &` then `btmri predict`) is still loading TensorFlow and its model.
    attempts: int = 100
    first_backoff: float = 0.25
    max_backoff: float = 2.0

    def backoffs(self):
        """Sleeps between attempts: 0.25, 0.5, 1, 2, ... seconds."""
        delay = self.first_backoff
        for _ in range(self.attempts - 1):
            yield delay
            delay = min(delay * 2, self.max_backoff)

    def attempts_within(self, timeout: float):
        """Each attempt's time left (seconds) before `timeout` from now runs out: the
        caller tries once per value and stops early on success. The sleeps between
        attempts come out of the same budget, so an unreachable server fails within
        `timeout`, not after every retry's backoff."""
        deadline = time.monotonic() + timeout
        for delay in [*self.backoffs(), None]:
            yield max(deadline - time.monotonic(), 0.001)
            if delay is None or time.monotonic() + delay >= deadline:
                return
            time.sleep(delay)


# What a client says instead of a class when the model abstains (abstain_reason → text).
ABSTAINED_OUT_OF_DISTRIBUTION = "not recognised as a brain MRI slice like the training images"
ABSTAINED_LOW_CONFIDENCE = "low confidence"
ABSTAINED_UNCERTAIN_NO_TUMOUR = "not confident enough that there is no tumour"


@dataclass
class ImagePrediction:
    class_name: str  # the model's most probable class, even when it abstains
    class_id: int
    probabilities: dict[str, float]
    model_version: int | None
    ood_score: float | None = None  # None: a model exported without abstention
    abstain: bool = False
    abstain_reason: str = ""

    @property
    def probability(self) -> float:
        return self.probabilities[self.class_name]

    @property
    def answer(self) -> str:
        """The class name, or "abstained: ..." saying why the model does not answer."""
        if not self.abstain:
            return self.class_name
        if self.abstain_reason == spec.REASON_OUT_OF_DISTRIBUTION:
            score = (
                "" if self.ood_score is None else f" (ood_score {self.ood_score:.2f}, over 1 is unlike them)"
            )
            return f"abstained: {ABSTAINED_OUT_OF_DISTRIBUTION}{score}"
        if self.abstain_reason == spec.REASON_LOW_CONFIDENCE:
            return f"abstained: {ABSTAINED_LOW_CONFIDENCE} (p={self.probability:.3f})"
        if self.abstain_reason == spec.REASON_UNCERTAIN_NO_TUMOUR:
            # Refused for its probability, or for an image less familiar than "no tumour" needs.
            score = "" if self.ood_score is None else f", ood_score {self.ood_score:.2f}"
            return f"abstained: {ABSTAINED_UNCERTAIN_NO_TUMOUR} (p(notumor)={self.probability:.3f}{score})"
        return f"abstained: {self.abstain_reason or 'no reason given'}"

    def as_record(self) -> dict:
        """The JSON fields `btmri predict` prints: class (None when abstaining), answer,
        probabilities, model version, and the abstention fields when the model has them."""
        record = {
            "class": None if self.abstain else self.class_name,
            "answer": self.answer,
            "probabilities": self.probabilities,
            "model_version": self.model_version,
        }
        if self.ood_score is not None:
            record.update(
                {
                    spec.OOD_SCORE: self.ood_score,
                    spec.ABSTAIN: self.abstain,
                    spec.ABSTAIN_REASON: self.abstain_reason,
                }
            )
        return record


@dataclass
class GradcamResult(ImagePrediction):
    heatmap: np.ndarray | None = None  # float32 [224, 224] in [0, 1]


def _text(value) -> str:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)


def _prediction(
    class_id: int, probabilities, version: int | None, abstention: dict | None = None
) -> ImagePrediction:
    """`abstention`: the row's ood_score/abstain/abstain_reason (absent for models
    exported before abstention: then the prediction never abstains)."""
    probs = {name: float(p) for name, p in zip(CLASS_NAMES, probabilities)}
    prediction = ImagePrediction(CLASS_NAMES[class_id], class_id, probs, version)
    if abstention and spec.ABSTAIN in abstention:
        prediction.ood_score = float(abstention[spec.OOD_SCORE])
        prediction.abstain = bool(abstention[spec.ABSTAIN])
        prediction.abstain_reason = _text(abstention.get(spec.ABSTAIN_REASON, ""))
    return prediction


def _grpc_abstention(outputs) -> dict:
    return {name: tf.make_ndarray(outputs[name])[0] for name in spec.ABSTENTION_OUTPUTS if name in outputs}


class PredictionClient:
    """gRPC client of TF Serving's PredictionService."""

    def __init__(
        self,
        target: str,
        model_name: str = spec.MODEL_NAME,
        timeout: float = REQUEST_TIMEOUT_SECONDS,
        retry: RetryPolicy = RetryPolicy(),
        max_message_mb: float = MAX_MESSAGE_MB,
        version_label: str | None = None,
    ):
        self.target = target
        self.model_name = model_name
        self.version_label = version_label  # None: the latest version
        self.timeout = timeout
        self.retry = retry
        size = int(max_message_mb * 1024 * 1024)
        self._channel = grpc.insecure_channel(
            target,
            options=[("grpc.max_receive_message_length", size), ("grpc.max_send_message_length", size)],
        )
        self._stub = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def predict(self, signature_name: str, inputs: dict, output_filter=()) -> predict_pb2.PredictResponse:
        """One Predict call; `inputs` maps input names to arrays or lists."""
        request = predict_request(
            signature_name,
            inputs,
            model_name=self.model_name,
            version_label=self.version_label,
            output_filter=output_filter,
        )
        return self._call(self._stub.Predict, request)

    def signature_defs(self) -> dict:
        """The served SignatureDefs by key (GetModelMetadata, field signature_def)."""
        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        request.model_spec.name = self.model_name
        if self.version_label:
            request.model_spec.version_label = self.version_label
        response = self._call(self._stub.GetModelMetadata, request)
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(signature_map)
        return dict(signature_map.signature_def)

    def _call(self, method, request):
        """`method(request)` on the stub, retried as the RetryPolicy says."""
        start, last, attempts = time.monotonic(), None, 0
        for left in self.retry.attempts_within(self.timeout):
            attempts += 1
            try:
                return method(request, timeout=left)
            except grpc.RpcError as err:
                if err.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED) or (
                    err.code() == grpc.StatusCode.DEADLINE_EXCEEDED and self._connected()
                ):
                    raise RequestFailed(err.code().name, err.details() or "") from None
                last = err
        raise ServerUnavailable(
            f"the model server at {self.target} is unavailable ({attempts} attempts "
            f"over {time.monotonic() - start:.1f} s): {last.details()}"
        )

    def _connected(self) -> bool:
        """Whether the channel has a connection (a deadline then means a slow answer,
        not a missing server)."""
        try:
            grpc.channel_ready_future(self._channel).result(timeout=0)
            return True
        except grpc.FutureTimeoutError:
            return False

    def _one_image(self, signature_name: str, image: bytes):
        """(the prediction of one image, the response's outputs)."""
        # No output filter: a model exported before abstention has no such outputs, and
        # naming one it lacks is an error.
        response = self.predict(signature_name, {spec.IMAGE_BYTES_INPUT: [image]})
        outputs = response.outputs
        prediction = _prediction(
            int(tf.make_ndarray(outputs[spec.CLASS_ID])[0]),
            tf.make_ndarray(outputs[spec.PROBABILITIES])[0],
            response.model_spec.version.value,
            _grpc_abstention(outputs),
        )
        return prediction, outputs

    def classify_image(self, image: bytes) -> ImagePrediction:
        return self._one_image(spec.PREDICT_IMAGES, image)[0]

    def gradcam(self, image: bytes) -> GradcamResult:
        base, outputs = self._one_image(spec.GRADCAM, image)
        return GradcamResult(**vars(base), heatmap=tf.make_ndarray(outputs[spec.HEATMAP])[0])


class RestClient:
    """REST client (`POST /v1/models/{name}:predict` with a b64 instance)."""

    def __init__(
        self,
        base_url: str,
        model_name: str = spec.MODEL_NAME,
        timeout: float = REQUEST_TIMEOUT_SECONDS,
        retry: RetryPolicy = RetryPolicy(),
        version_label: str | None = None,
    ):
        self.base_url = base_url.rstrip("/")
        if "://" not in self.base_url:
            self.base_url = "http://" + self.base_url
        self.model_name = model_name
        self.version_label = version_label  # None: the latest version
        self.timeout = timeout
        self.retry = retry

    @property
    def model_path(self) -> str:
        """/v1/models/{name}[/labels/{label}]"""
        path = f"/v1/models/{urllib.parse.quote(self.model_name, safe='')}"
        if self.version_label:
            path += f"/labels/{urllib.parse.quote(self.version_label, safe='')}"
        return path

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def request(self, method: str, path: str, document: dict | None = None) -> dict:
        data = None if document is None else json.dumps(document).encode()
        start, last, attempts = time.monotonic(), None, 0
        for left in self.retry.attempts_within(self.timeout):
            attempts += 1
            req = urllib.request.Request(
                self.base_url + path, data=data, method=method, headers={"Content-Type": "application/json"}
            )
            try:
                with urllib.request.urlopen(req, timeout=left) as resp:
                    return json.loads(resp.read())
            except urllib.error.HTTPError as err:
                body = err.read()
                try:
                    message = json.loads(body).get("error", "")
                except ValueError:
                    message = body.decode(errors="replace")
                if err.code != 503:
                    raise RequestFailed(f"HTTP {err.code}", message) from None
                last = f"HTTP 503: {message}"
            except (urllib.error.URLError, ConnectionError, TimeoutError) as err:
                last = str(getattr(err, "reason", err))
        raise ServerUnavailable(
            f"the model server at {self.base_url} is unavailable ({attempts} attempts "
            f"over {time.monotonic() - start:.1f} s): {last}"
        )

    def predict(self, signature_name: str, values: list[bytes], version: int | None = None) -> list:
        """One predict call with binary `values` (one b64 instance each); the answer's
        rows. `version`: that version; None: the client's label if it has one, else
        the latest version."""
        path = self.model_path
        if version is not None:
            path = f"/v1/models/{urllib.parse.quote(self.model_name, safe='')}/versions/{version}"
        document = {
            "signature_name": signature_name,
            "instances": [{"b64": base64.b64encode(value).decode("ascii")} for value in values],
        }
        return self.request("POST", f"{path}:predict", document)["predictions"]

    def model_version(self) -> int | None:
        """The AVAILABLE version (REST predict answers do not name the version)."""
        status = self.request("GET", self.model_path)
        versions = [
            int(s["version"]) for s in status.get("model_version_status", []) if s.get("state") == "AVAILABLE"
        ]
        return max(versions) if versions else None

    def _one_image(self, signature_name: str, image: bytes):
        """(the prediction of one image, its answer row)."""
        row = self.predict(signature_name, [image])[0]
        return _prediction(int(row[spec.CLASS_ID]), row[spec.PROBABILITIES], self.model_version(), row), row

    def classify_image(self, image: bytes) -> ImagePrediction:
        return self._one_image(spec.PREDICT_IMAGES, image)[0]

    def gradcam(self, image: bytes) -> GradcamResult:
        base, row = self._one_image(spec.GRADCAM, image)
        return GradcamResult(**vars(base), heatmap=np.asarray(row[spec.HEATMAP], np.float32))
