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

Modules, as TFX splits its own components: component.py (spec and class),
executor.py (serve the candidate, run the checks, record the result), warmup.py (the
warm-up file), checks.py (the checks), inputs.py (the images and each signature's
input). Import the names below from this package.
"""

from pipeline.infra_validator.checks import answer_problems, contract_problems
from pipeline.infra_validator.component import InfraValidator
from pipeline.infra_validator.executor import VALIDATED_MODEL_KEY, InfraValidatorExecutor
from pipeline.infra_validator.warmup import warmup_logs, write_warmup

__all__ = [
    "VALIDATED_MODEL_KEY",
    "InfraValidator",
    "InfraValidatorExecutor",
    "answer_problems",
    "contract_problems",
    "warmup_logs",
    "write_warmup",
]
