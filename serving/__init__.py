"""TF Serving configuration, the local model server and the clients.

The local server follows TF Serving's own split:
  source.py    which version folders exist (file-system storage path source)
  model_config.py   ModelServerConfig files: models, version policies, version labels
  loader.py    one SavedModel version → a Servable with callable signatures
  manager.py   which versions of a model serve (its policy); load-before-unload swaps; states
  models.py    the models of one server and their version labels
  batching.py  server-side batching of concurrent requests
  canary.py    warm-up replay and canary request before a version takes traffic
  core.py      request handling shared by both front ends (ServerCore)
  limits.py    request limits, deadlines and cancellation
  grpc_api.py (+ tensors.py), rest_api.py (+ http_server.py, rest_json.py, messages.py)
               the two protocols, both on one asyncio event loop
  prometheus_metrics.py   Prometheus text; errors.py   TF Serving's codes and texts
  server.py    wiring, start/stop; process.py   run it as a child process
Clients: client.py (gRPC/REST), requests.py (the one PredictRequest builder),
latency.py (p50/p99 of request times), heatmap_overlay.py (drawing a Grad-CAM heatmap;
the report draws with it too); hostile_cases.py: hostile traffic and the answers it
should get (benchmarks/serving_hostile.py and its test); cli.py: the btmri commands;
__main__: python -m serving.
Names (model, signatures, inputs, outputs) and ServerOptions live in btmri/.
config/ and Dockerfile: the official tensorflow/serving image's configuration.
"""

import btmri  # noqa: F401  (selects Keras 2 before TensorFlow loads)

# The model server hands oneDNN back to TensorFlow where it starts (serving.cli's
# `serve`), not here: `btmri run` imports this package to list its subcommands, and a
# choice made on import turned oneDNN off for the pipeline's training too (1.5x slower
# epochs on AVX2; docs/experiments.md, 2026-12-07 night).
