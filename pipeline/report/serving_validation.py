"""The serving validation (the InfraValidator's InfraValidation) in the report and the
model card: one verdict, the checks it ran and the served latency, shared by both."""

from __future__ import annotations

from btmri.layout import WARMUP_PATH
from btmri.spec import ANSWER_TOLERANCE
from pipeline.report.markup import Cell, Paragraph, Table


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def verdict(validation) -> str:
    """One sentence: served or not, and why."""
    if validation is None:
        return (
            "No serving validation: the run had no InfraValidator step (made before it "
            "existed), so nothing here shows the model serves."
        )
    if not validation.validated:
        return (
            f"Not served before the push ({validation.reason}); a model that is not blessed is never pushed."
        )
    if not validation.blessed:
        return (
            f"The model failed its serving validation and was not pushed: {validation.reason}. "
            "The Pusher requires this validation to pass."
        )
    return (
        "The model was served by `btmri serve` before the push (the local TF-Serving-compatible "
        f"server, a subprocess on loopback ports), answered {validation.images} images of the "
        "evaluated split through every signature over gRPC and REST as the in-process "
        f"SavedModel does (floats within {ANSWER_TOLERANCE:g}), and passed every check below. Its warm-up file ({WARMUP_PATH}, "
        f"{validation.warmup_records} requests) was replayed before it took traffic and ships "
        "in the pushed version."
    )


def blocks(validation, table_id: str = "serving-validation") -> list:
    """Verdict, latency and the checks."""
    out = [Paragraph(verdict(validation))]
    if validation is None or not validation.validated:
        return out
    if validation.grpc_p50_ms is not None:
        out.append(
            Table(
                ["protocol", "requests", "p50 ms", "p99 ms"],
                [
                    [
                        Cell("gRPC"),
                        Cell(str(validation.latency_requests), "num"),
                        Cell(_ms(validation.grpc_p50_ms), "num"),
                        Cell(_ms(validation.grpc_p99_ms), "num"),
                    ],
                    [
                        Cell("REST"),
                        Cell(str(validation.latency_requests), "num"),
                        Cell(_ms(validation.rest_p50_ms), "num"),
                        Cell(_ms(validation.rest_p99_ms), "num"),
                    ],
                ],
                id=f"{table_id}-latency",
                caption="Served latency of one-image predict_images requests, one after another, "
                "client and server on the validating machine; start-up (warm-up included) "
                f"{validation.startup_seconds:.1f} s",
            )
        )
    out.append(
        Table(
            ["check", "result", "detail"],
            [
                [
                    Cell(c["name"]),
                    Cell("pass" if c["passed"] else "fail", "pass" if c["passed"] else "fail"),
                    Cell(c["detail"]),
                ]
                for c in validation.checks
            ],
            id=table_id,
        )
    )
    return out
