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
    add_options,
    add_output_flags,
    add_work_dir,
    error,
    option_fields,
    options_from,
)
from btmri.console import quiet_environment
from btmri.documents import SERVER_DEFAULTS, ServerOptions
from btmri.layout import DEFAULT_LAYOUT, RunLayout
from serving.heatmap_overlay import DEFAULT_STRENGTH


def server_process_settings() -> None:
    """What a model server process sets before TensorFlow loads: TensorFlow's own oneDNN
    choice (on only where the CPU has AVX-512 VNNI/BF16 or AMX), unless the user chose.
    On an AVX2-only CPU oneDNN answered a one-image predict_images in 211 ms against
    Eigen's 20 (docs/experiments.md, 2026-12-07)."""
    import btmri

    if "tensorflow" in sys.modules:  # too late to change; say so rather than pretend
        logging.warning("TensorFlow is loaded already: the server keeps this process's oneDNN setting")
        return
    btmri.leave_onednn_to_tensorflow()


def _cmd_serve(args: argparse.Namespace) -> int:
    server_process_settings()
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
    options = ServerOptions(**dict(options_from(args, ServerOptions), model_base_path=base_path or ""))
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
    """The server's options, each flag from its ServerOptions field (btmri.documents.option)."""
    add_work_dir(p, "its pushed model, unless --model-base-path or --model-config-file")
    serving = tuple(f.name for f in option_fields(ServerOptions) if f.name not in ServerOptions.LOGGING)
    add_options(p, ServerOptions, serving)
    group = p.add_argument_group("request logging (TF Serving PredictionLog TFRecords; docs/monitoring.md)")
    add_options(group, ServerOptions, ServerOptions.LOGGING)
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
