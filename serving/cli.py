"""`btmri serve`, `btmri predict`, `btmri gradcam` (and `python -m serving`).

`register(subparsers)` is called by pipeline/cli.py; `main()` is `python -m serving`,
the server alone. Handlers import TensorFlow and gRPC only when they run, so
`btmri --help` stays instant. Defaults come from btmri.documents.ServerOptions.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from btmri.cli_conventions import (
    EXIT_OK,
    EXIT_UNAVAILABLE,
    add_output_flags,
    add_work_dir,
    error,
)
from btmri.console import quiet_environment
from btmri.documents import SERVER_DEFAULTS, ServerOptions
from btmri.layout import DEFAULT_LAYOUT, RunLayout
from btmri.spec import LOG_PAYLOADS
from serving.heatmap_overlay import DEFAULT_STRENGTH


def _cmd_serve(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    from serving.server import serve

    if args.batching_parameters_file and not args.enable_batching:
        return error("serve", "--batching-parameters-file needs --enable-batching")
    if args.model_base_path and args.model_config_file:
        return error("serve", "give either --model-base-path or --model-config-file, not both")
    base_path = args.model_base_path
    if not base_path and not args.model_config_file:
        # The work folder's pushed model: what `btmri run` (same --work-dir) pushed.
        base_path = RunLayout(args.work_dir).serving_dir
        if not Path(base_path).is_dir():
            return error(
                "serve",
                f"no pushed model in {base_path}: run `btmri run` first (or `btmri run --quick` "
                "for a smoke run), or give --model-base-path or --model-config-file",
            )
    options = ServerOptions(
        model_base_path=base_path or "",
        model_name=args.model_name,
        model_config_file=args.model_config_file,
        model_config_file_poll_wait_seconds=args.model_config_file_poll_wait_seconds,
        allow_version_labels_for_unavailable_models=args.allow_version_labels_for_unavailable_models,
        host=args.host,
        port=args.port,
        rest_port=args.rest_port,
        poll_seconds=args.poll_seconds,
        enable_batching=args.enable_batching,
        max_message_mb=args.max_message_mb,
        grpc_workers=args.grpc_workers,
        max_rows=args.max_rows,
        max_response_mb=args.max_response_mb,
        max_json_values=args.max_json_values,
        client_timeout_seconds=args.client_timeout_seconds,
        max_connections=args.max_connections,
        max_load_retries=args.max_load_retries,
        load_retry_interval_seconds=args.load_retry_interval_seconds,
        request_log_dir=args.request_log,
        log_sampling_rate=args.log_sampling_rate,
        log_payload=args.log_payload,
        log_max_mb=args.log_max_mb,
        log_file_mb=args.log_file_mb,
        log_rotate_seconds=args.log_rotate_seconds,
        log_queue_records=args.log_queue_records,
        log_queue_mb=args.log_queue_mb,
    )
    if args.batching_parameters_file:
        options.batching_parameters_file = args.batching_parameters_file
    return serve(options)


def _client(args: argparse.Namespace):
    from serving.client import PredictionClient, RestClient

    if getattr(args, "rest", None):
        return RestClient(
            args.rest, model_name=args.model_name, timeout=args.timeout, version_label=args.label
        )
    return PredictionClient(
        args.server, model_name=args.model_name, timeout=args.timeout, version_label=args.label
    )


def _payload(path: str) -> bytes:
    """The bytes to send for an image file, read and converted with prepare's code
    (serving.client.image_payload); ValueError with the reason when impossible."""
    from data_prep.image_io import ImageError, read_bytes
    from serving.client import image_payload

    try:
        data = read_bytes(path)
    except ImageError as err:
        raise ValueError(f"cannot read: {err}") from None
    return image_payload(data, path)


def _cmd_predict(args: argparse.Namespace) -> int:
    from serving.client import RequestFailed, ServerUnavailable, unavailable_message

    failures = 0
    with _client(args) as client:
        for path in args.images:
            record = {"file": path}
            try:
                record.update(client.classify_image(_payload(path)).as_record())
            except ValueError as err:
                record["error"] = str(err)
            except RequestFailed as err:
                record["error"] = str(err)
            except ServerUnavailable as err:
                print(unavailable_message("btmri predict", err), file=sys.stderr)
                return EXIT_UNAVAILABLE
            failures += "error" in record
            print(json.dumps(record), flush=True)
    # Images it could not classify (unreadable, or refused by the server) are bad input.
    return error("predict", f"{failures} of {len(args.images)} images failed") if failures else EXIT_OK


def _cmd_gradcam(args: argparse.Namespace) -> int:
    from serving import heatmap_overlay
    from serving.client import RequestFailed, ServerUnavailable, unavailable_message

    if not 0.0 <= args.alpha <= 1.0:
        return error("gradcam", f"--alpha must be in [0, 1], got {args.alpha}")
    out = Path(args.out)
    failures = 0
    with _client(args) as client:
        for path, stem in zip(args.images, heatmap_overlay.unique_stems(args.images)):
            try:
                data = _payload(path)  # drawn as sent: a DICOM shows as the model saw it
                result = client.gradcam(data)
                images = heatmap_overlay.render(heatmap_overlay.decode_bgr(data), result.heatmap, args.alpha)
                if result.abstain:
                    images = heatmap_overlay.mark_abstained(images, result.abstain_reason)
                written = heatmap_overlay.write(images, out, stem)
            except ServerUnavailable as err:
                print(unavailable_message("btmri gradcam", err), file=sys.stderr)
                return EXIT_UNAVAILABLE
            except (OSError, ValueError, RequestFailed) as err:
                print(f"{path}: error: {err}", file=sys.stderr)
                failures += 1
                continue
            if result.abstain:
                print(
                    f"{path}: {result.answer} (model's top class {result.class_name}, "
                    f"p={result.probability:.3f}, model version {result.model_version}; heatmap "
                    f"marked ABSTAINED) -> {written['overlay']}",
                    flush=True,
                )
            else:
                print(
                    f"{path}: {result.class_name} (p={result.probability:.3f}, model version "
                    f"{result.model_version}) -> {written['overlay']}",
                    flush=True,
                )
    return error("gradcam", f"{failures} of {len(args.images)} images failed") if failures else EXIT_OK


def add_serve_arguments(p: argparse.ArgumentParser) -> None:
    """The server's options; defaults from btmri.documents.ServerOptions."""
    p.add_argument(
        "--model-base-path",
        default=None,
        help="TF Serving base path (<dir>/<version>/saved_model.pb); or --model-config-file; "
        "default: the work folder's pushed model, WORK_DIR/serving/brain_tumor",
    )
    add_work_dir(p, "its pushed model, unless --model-base-path or --model-config-file")
    p.add_argument(
        "--model-name", default=SERVER_DEFAULTS.model_name, help="served model name (default %(default)s)"
    )
    p.add_argument(
        "--model-config-file",
        default=None,
        metavar="FILE",
        help="TF Serving ModelServerConfig text file: several models, version policies "
        "(latest N, all, specific) and version labels (e.g. serving/config/"
        "canary.config); instead of --model-base-path/--model-name",
    )
    p.add_argument(
        "--model-config-file-poll-wait-seconds",
        type=float,
        default=SERVER_DEFAULTS.model_config_file_poll_wait_seconds,
        help="reread --model-config-file this often and apply changes (models, "
        "policies, labels); 0: read once (default %(default)s)",
    )
    p.add_argument(
        "--allow-version-labels-for-unavailable-models",
        action="store_true",
        help="a label not assigned yet may point at a version that is not loaded "
        "(TF Serving's flag of that name)",
    )
    p.add_argument(
        "--host",
        default=SERVER_DEFAULTS.host,
        help="address to bind (default %(default)s; 0.0.0.0 exposes the server)",
    )
    p.add_argument("--port", type=int, default=SERVER_DEFAULTS.port, help="gRPC port (default %(default)s)")
    p.add_argument(
        "--rest-port",
        type=int,
        default=SERVER_DEFAULTS.rest_port,
        help="REST and metrics port, 0 for none (default %(default)s)",
    )
    p.add_argument(
        "--poll-seconds",
        type=float,
        default=SERVER_DEFAULTS.poll_seconds,
        help="how often to look for new versions (default %(default)s)",
    )
    p.add_argument(
        "--enable-batching",
        action="store_true",
        help="merge concurrent requests into batches (serving/config/batching.config)",
    )
    p.add_argument(
        "--batching-parameters-file",
        default=None,
        help="TF Serving batching parameters file (default: serving/config/batching.config)",
    )
    p.add_argument(
        "--max-message-mb",
        type=float,
        default=SERVER_DEFAULTS.max_message_mb,
        help="largest request in MiB; larger ones get RESOURCE_EXHAUSTED (default %(default)s)",
    )
    p.add_argument(
        "--max-rows",
        type=int,
        default=SERVER_DEFAULTS.max_rows,
        help="most rows (images) per request; more get INVALID_ARGUMENT / HTTP 400 (default %(default)s)",
    )
    p.add_argument(
        "--max-response-mb",
        type=float,
        default=SERVER_DEFAULTS.max_response_mb,
        help="largest response in MiB (JSON for REST); larger ones get "
        "RESOURCE_EXHAUSTED / HTTP 429 (default %(default)s)",
    )
    p.add_argument(
        "--max-json-values",
        type=int,
        default=SERVER_DEFAULTS.max_json_values,
        help="most values in one REST body, counted before parsing; more get HTTP 400 (default %(default)s)",
    )
    p.add_argument(
        "--client-timeout-seconds",
        type=float,
        default=SERVER_DEFAULTS.client_timeout_seconds,
        help="a client must send its request (REST head, then body; gRPC message) and "
        "take its response within this; idle REST connections close after it "
        "(default %(default)s)",
    )
    p.add_argument(
        "--max-connections",
        type=int,
        default=SERVER_DEFAULTS.max_connections,
        help="open REST connections and gRPC calls in progress, each; more are refused (default %(default)s)",
    )
    p.add_argument(
        "--max-load-retries",
        type=int,
        default=SERVER_DEFAULTS.max_load_retries,
        help="tries again for a version that failed to load while its files stay "
        "unchanged (changed files always get a new try) (default %(default)s)",
    )
    p.add_argument(
        "--load-retry-interval-seconds",
        type=float,
        default=SERVER_DEFAULTS.load_retry_interval_seconds,
        help="wait between those tries (default %(default)s)",
    )
    p.add_argument(
        "--grpc-workers",
        type=int,
        default=SERVER_DEFAULTS.grpc_workers,
        help="threads that run requests, gRPC and REST (default %(default)s)",
    )
    g = p.add_argument_group("request logging (TF Serving PredictionLog TFRecords; docs/monitoring.md)")
    g.add_argument(
        "--request-log",
        default=None,
        metavar="DIR",
        help="log sampled successful Predict calls into DIR (default: no logging)",
    )
    g.add_argument(
        "--log-sampling-rate",
        type=float,
        default=SERVER_DEFAULTS.log_sampling_rate,
        metavar="R",
        help="share of calls logged, in (0, 1] (default %(default)s)",
    )
    g.add_argument(
        "--log-payload",
        default=SERVER_DEFAULTS.log_payload,
        choices=LOG_PAYLOADS,
        help="what of the request is kept: none (response and metadata only), features "
        "(derived image features instead of the image) or images (the whole "
        "request) (default %(default)s)",
    )
    g.add_argument(
        "--log-max-mb",
        type=float,
        default=SERVER_DEFAULTS.log_max_mb,
        metavar="N",
        help="size budget of DIR in MiB; the oldest files are deleted beyond it (default %(default)s)",
    )
    g.add_argument(
        "--log-file-mb",
        type=float,
        default=SERVER_DEFAULTS.log_file_mb,
        help="a log file is closed at this size, at most a quarter of the budget (default %(default)s)",
    )
    g.add_argument(
        "--log-rotate-seconds",
        type=float,
        default=SERVER_DEFAULTS.log_rotate_seconds,
        help="... or this long after its first record (default %(default)s)",
    )
    g.add_argument(
        "--log-queue-records",
        type=int,
        default=SERVER_DEFAULTS.log_queue_records,
        help="records waiting for the log writer; more are dropped and counted (default %(default)s)",
    )
    g.add_argument(
        "--log-queue-mb",
        type=float,
        default=SERVER_DEFAULTS.log_queue_mb,
        help="MiB those records may hold (default %(default)s)",
    )
    add_output_flags(p, "warnings and errors only (no start-up and reload notes)")


def register(subparsers) -> None:
    """Adds `serve`, `predict` and `gradcam` to the `btmri` parser."""
    p = subparsers.add_parser(
        "serve",
        help="local TF-Serving-compatible model server (gRPC + REST)",
        description="Serves the highest version under --model-base-path (or the models, version "
        "policies and labels of --model-config-file) with TF Serving's gRPC and REST "
        "APIs; polls for new versions and swaps without dropping requests.",
    )
    add_serve_arguments(p)
    p.set_defaults(func=_cmd_serve)

    def client_args(p, rest: bool):
        p.add_argument(
            "images",
            nargs="+",
            metavar="IMAGE",
            help="JPEG/PNG files; DICOM, TIFF and BMP are converted to PNG first, "
            "as btmri prepare converts them",
        )
        p.add_argument(
            "--server",
            default=f"localhost:{SERVER_DEFAULTS.port}",
            help="gRPC address HOST:PORT (default %(default)s)",
        )
        if rest:
            p.add_argument(
                "--rest",
                default=None,
                metavar="URL",
                help=f"use the REST API at URL (e.g. http://localhost:{SERVER_DEFAULTS.rest_port}) "
                "instead of gRPC",
            )
        p.add_argument(
            "--model-name", default=SERVER_DEFAULTS.model_name, help="served model name (default %(default)s)"
        )
        p.add_argument(
            "--label",
            default=None,
            metavar="LABEL",
            help="ask the version with this version label (e.g. canary) instead of the latest",
        )
        p.add_argument(
            "--timeout",
            type=float,
            default=SERVER_DEFAULTS.client_timeout_seconds,
            help="seconds per request, retries on an unavailable server included (default %(default)s)",
        )
        add_output_flags(p, "no notes beside the results")

    p = subparsers.add_parser(
        "predict",
        help="classify images with a running model server",
        description="Prints one JSON line per image: file, class (null when "
        "the model abstains), answer (the class, or 'abstained: "
        "...' with the reason), probabilities, model version, "
        "ood_score, abstain, abstain_reason.",
    )
    client_args(p, rest=True)
    p.set_defaults(func=_cmd_predict)

    p = subparsers.add_parser(
        "gradcam",
        help="Grad-CAM heatmaps from a running model server",
        description="Writes <name>_original.png, <name>_heatmap.png and "
        "<name>_overlay.png per image into --out.",
    )
    client_args(p, rest=True)
    p.add_argument("--out", default=DEFAULT_LAYOUT.gradcam_dir, help="output folder (default %(default)s)")
    p.add_argument(
        "--alpha",
        type=float,
        default=DEFAULT_STRENGTH,
        help="heat colour share where the heatmap is 1 (default %(default)s; the "
        "report's overlays use the same)",
    )
    p.set_defaults(func=_cmd_gradcam)


def main(argv: list[str] | None = None) -> int:
    """`python -m serving`: the model server alone (what serving/process.py starts)."""
    parser = argparse.ArgumentParser(
        prog="python -m serving",
        description="Local TF-Serving-compatible model server (gRPC + REST); the same as `btmri serve`.",
    )
    add_serve_arguments(parser)
    args = parser.parse_args(argv)
    quiet_environment(verbose=args.verbose, tf_warnings=False)
    return _cmd_serve(args)
