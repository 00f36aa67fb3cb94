"""`btmri serve`, `btmri predict`, `btmri gradcam`.

`register(subparsers)` is called by pipeline/cli.py. Handlers import
TensorFlow and gRPC only when they run, so `btmri --help` stays instant.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from serving import MODEL_NAME


def _cmd_serve(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    from serving.server import ServerOptions, serve

    if args.batching_parameters_file and not args.enable_batching:
        print("btmri serve: --batching-parameters-file needs --enable-batching", file=sys.stderr)
        return 2
    options = ServerOptions(
        model_base_path=args.model_base_path, model_name=args.model_name, host=args.host,
        port=args.port, rest_port=args.rest_port, poll_seconds=args.poll_seconds,
        enable_batching=args.enable_batching, max_message_mb=args.max_message_mb,
        grpc_workers=args.grpc_workers, max_rows=args.max_rows,
        max_response_mb=args.max_response_mb, max_json_values=args.max_json_values,
        client_timeout_seconds=args.client_timeout_seconds,
        max_connections=args.max_connections, max_load_retries=args.max_load_retries,
        load_retry_interval_seconds=args.load_retry_interval_seconds)
    if args.batching_parameters_file:
        options.batching_parameters_file = args.batching_parameters_file
    return serve(options)


def _client(args: argparse.Namespace):
    from serving.client import PredictionClient, RestClient

    if getattr(args, "rest", None):
        return RestClient(args.rest, model_name=args.model_name, timeout=args.timeout)
    return PredictionClient(args.server, model_name=args.model_name, timeout=args.timeout)


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
    from serving.client import RequestFailed, ServerUnavailable

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
                print(f"btmri predict: {err}\n(is the server running? start one with "
                      f"`btmri serve --model-base-path DIR`)", file=sys.stderr)
                return 3
            failures += "error" in record
            print(json.dumps(record), flush=True)
    return 1 if failures else 0


def _cmd_gradcam(args: argparse.Namespace) -> int:
    from serving import gradcam
    from serving.client import RequestFailed, ServerUnavailable

    if not 0.0 <= args.alpha <= 1.0:
        print(f"btmri gradcam: --alpha must be in [0, 1], got {args.alpha}", file=sys.stderr)
        return 2
    out = Path(args.out)
    failures = 0
    with _client(args) as client:
        for path, stem in zip(args.images, gradcam.unique_stems(args.images)):
            try:
                data = _payload(path)  # drawn as sent: a DICOM shows as the model saw it
                result = client.gradcam(data)
                images = gradcam.render(gradcam.decode_image(data), result.heatmap, args.alpha)
                if result.abstain:
                    images = gradcam.mark_abstained(images, result.abstain_reason)
                written = gradcam.write(images, out, stem)
            except ServerUnavailable as err:
                print(f"btmri gradcam: {err}\n(is the server running? start one with "
                      f"`btmri serve --model-base-path DIR`)", file=sys.stderr)
                return 3
            except (OSError, ValueError, RequestFailed) as err:
                print(f"{path}: error: {err}", file=sys.stderr)
                failures += 1
                continue
            if result.abstain:
                print(f"{path}: {result.answer} (model's top class {result.class_name}, "
                      f"p={result.probability:.3f}, model version {result.model_version}; heatmap "
                      f"marked ABSTAINED) -> {written['overlay']}", flush=True)
            else:
                print(f"{path}: {result.class_name} (p={result.probability:.3f}, model version "
                      f"{result.model_version}) -> {written['overlay']}", flush=True)
    return 1 if failures else 0


def register(subparsers) -> None:
    """Adds `serve`, `predict` and `gradcam` to the `btmri` parser."""
    p = subparsers.add_parser(
        "serve", help="local TF-Serving-compatible model server (gRPC + REST)",
        description="Serves the highest version under --model-base-path with TF Serving's gRPC "
                    "and REST APIs; polls for new versions and swaps without dropping requests.")
    p.add_argument("--model-base-path", required=True,
                   help="TF Serving base path (<dir>/<version>/saved_model.pb)")
    p.add_argument("--model-name", default=MODEL_NAME, help="served model name (default %(default)s)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default %(default)s; 0.0.0.0 exposes the server)")
    p.add_argument("--port", type=int, default=8500, help="gRPC port (default %(default)s)")
    p.add_argument("--rest-port", type=int, default=8501,
                   help="REST and metrics port, 0 for none (default %(default)s)")
    p.add_argument("--poll-seconds", type=float, default=1.0,
                   help="how often to look for new versions (default %(default)s)")
    p.add_argument("--enable-batching", action="store_true",
                   help="merge concurrent requests into batches (serving/config/batching.config)")
    p.add_argument("--batching-parameters-file", default=None,
                   help="TF Serving batching parameters file (default: serving/config/batching.config)")
    p.add_argument("--max-message-mb", type=float, default=64,
                   help="largest request in MiB; larger ones get RESOURCE_EXHAUSTED (default %(default)s)")
    p.add_argument("--max-rows", type=int, default=64,
                   help="most rows (images) per request; more get INVALID_ARGUMENT / HTTP 400 "
                        "(default %(default)s)")
    p.add_argument("--max-response-mb", type=float, default=16,
                   help="largest response in MiB (JSON for REST); larger ones get "
                        "RESOURCE_EXHAUSTED / HTTP 429 (default %(default)s)")
    p.add_argument("--max-json-values", type=int, default=1_000_000,
                   help="most values in one REST body, counted before parsing; more get HTTP 400 "
                        "(default %(default)s)")
    p.add_argument("--client-timeout-seconds", type=float, default=30.0,
                   help="a client must send its request (REST head, then body; gRPC message) and "
                        "take its response within this; idle REST connections close after it "
                        "(default %(default)s)")
    p.add_argument("--max-connections", type=int, default=256,
                   help="open REST connections and gRPC calls in progress, each; more are refused "
                        "(default %(default)s)")
    p.add_argument("--max-load-retries", type=int, default=5,
                   help="tries again for a version that failed to load while its files stay "
                        "unchanged (changed files always get a new try) (default %(default)s)")
    p.add_argument("--load-retry-interval-seconds", type=float, default=60.0,
                   help="wait between those tries (default %(default)s)")
    p.add_argument("--grpc-workers", type=int, default=16,
                   help="threads that run requests, gRPC and REST (default %(default)s)")
    p.add_argument("--verbose", action="store_true", help="debug logging (one line per REST request)")
    p.set_defaults(func=_cmd_serve)

    def client_args(p, rest: bool):
        p.add_argument("images", nargs="+", metavar="IMAGE",
                       help="JPEG/PNG files; DICOM, TIFF and BMP are converted to PNG first, "
                            "as btmri prepare converts them")
        p.add_argument("--server", default="localhost:8500",
                       help="gRPC address HOST:PORT (default %(default)s)")
        if rest:
            p.add_argument("--rest", default=None, metavar="URL",
                           help="use the REST API at URL (e.g. http://localhost:8501) instead of gRPC")
        p.add_argument("--model-name", default=MODEL_NAME)
        p.add_argument("--timeout", type=float, default=30.0,
                       help="seconds per request (default %(default)s)")

    p = subparsers.add_parser("predict", help="classify images with a running model server",
                              description="Prints one JSON line per image: file, class (null when "
                                          "the model abstains), answer (the class, or 'abstained: "
                                          "...' with the reason), probabilities, model version, "
                                          "ood_score, abstain, abstain_reason.")
    client_args(p, rest=True)
    p.set_defaults(func=_cmd_predict)

    p = subparsers.add_parser("gradcam", help="Grad-CAM heatmaps from a running model server",
                              description="Writes <name>_original.png, <name>_heatmap.png and "
                                          "<name>_overlay.png per image into --out.")
    client_args(p, rest=False)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--alpha", type=float, default=0.4, help="heatmap weight in the overlay")
    p.set_defaults(func=_cmd_gradcam)
