"""`predict_request`: the one builder of TF Serving's `PredictRequest` in the project.

The gRPC client, the InfraValidator's warm-up file, the request log, the benchmarks and
the tests all build their Predict calls here, so a request says the same thing
whoever sends it. Tests and hostile cases that need a request this builder would never
make start from one of its requests and then break it by hand.
"""

from __future__ import annotations

from btmri import spec


def predict_request(
    signature_name: str,
    inputs: dict,
    *,
    model_name: str = spec.MODEL_NAME,
    version: int | None = None,
    version_label: str | None = None,
    output_filter=(),
    into=None,
):
    """A PredictRequest for `signature_name` ("" is the model's default signature).

    `inputs` maps input aliases to lists or arrays (each becomes a TensorProto as
    `tf.make_tensor_proto` makes it). `version` / `version_label`: None asks for the
    latest version. `into`: an empty PredictRequest to fill instead of a new one (a
    PredictionLog's own request: the tensors are not copied twice).
    """
    import tensorflow as tf  # TensorFlow only when a request is built
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest() if into is None else into
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature_name
    if version is not None:
        request.model_spec.version.value = version
    if version_label:
        request.model_spec.version_label = version_label
    for alias, value in inputs.items():
        request.inputs[alias].CopyFrom(tf.make_tensor_proto(value))
    request.output_filter.extend(output_filter)
    return request
