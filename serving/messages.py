"""TF Serving API messages built from the core's answers.

Both front ends answer status and metadata queries with the same protos: gRPC
sends them as they are, REST prints them as JSON the way TF Serving does.
"""

from __future__ import annotations

from google.protobuf import json_format
from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2

from serving.core import ModelRef, ServerCore

SIGNATURE_DEF_FIELD = "signature_def"


def model_ref(spec) -> ModelRef:
    """A ModelSpec proto → ModelRef (version is a oneof with version_label)."""
    version = spec.version.value if spec.HasField("version") else None
    return ModelRef(spec.name, version, spec.version_label)


def status_response(core: ServerCore, ref: ModelRef) -> get_model_status_pb2.GetModelStatusResponse:
    response = get_model_status_pb2.GetModelStatusResponse()
    for version, status in core.status(ref):
        entry = response.model_version_status.add()
        entry.version = version
        entry.state = int(status.state)
        entry.status.error_code = status.error_code.value[0]  # same numbering as tensorflow.error.Code
        entry.status.error_message = status.error_message
    return response


def metadata_response(
    core: ServerCore, ref: ModelRef, fields
) -> get_model_metadata_pb2.GetModelMetadataResponse:
    version, signature_defs = core.metadata(ref, list(fields))
    response = get_model_metadata_pb2.GetModelMetadataResponse()
    response.model_spec.name = ref.name
    response.model_spec.version.value = version
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    for key, signature_def in signature_defs.items():
        signature_map.signature_def[key].CopyFrom(signature_def)
    response.metadata[SIGNATURE_DEF_FIELD].Pack(signature_map)
    return response


def status_json(response: get_model_status_pb2.GetModelStatusResponse) -> dict:
    """As TF Serving's REST API prints it (every field, even defaults)."""
    return json_format.MessageToDict(response, including_default_value_fields=True)


def metadata_json(response: get_model_metadata_pb2.GetModelMetadataResponse) -> dict:
    """TF Serving's REST layout: model_spec plus the unpacked SignatureDefMap, proto field names."""
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    response.metadata[SIGNATURE_DEF_FIELD].Unpack(signature_map)
    options = dict(including_default_value_fields=True, preserving_proto_field_name=True)
    return {
        "model_spec": json_format.MessageToDict(response.model_spec, **options),
        "metadata": {SIGNATURE_DEF_FIELD: json_format.MessageToDict(signature_map, **options)},
    }
