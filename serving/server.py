"""The local model server: manager + batching + gRPC and REST front ends.

`btmri serve` runs `serve(options)`. The server answers from the moment it
listens (status queries report LOADING); gRPC health says SERVING once a
version is available. SIGTERM/SIGINT stop it cleanly: health goes NOT_SERVING,
listeners close, in-flight requests get a grace period.
"""
from __future__ import annotations

import logging
import os
import signal
import threading
from dataclasses import dataclass
from pathlib import Path

from serving import MODEL_NAME
from serving.batching import BatchingParameters, BatchScheduler
from serving.core import ServerCore
from serving.grpc_api import build_grpc_server, set_health
from serving.manager import ServableManager
from serving.metrics import ServingMetrics
from serving.rest_api import build_rest_server

log = logging.getLogger("serving")

CONFIG_DIR = Path(__file__).resolve().parent / "config"
DEFAULT_BATCHING_FILE = CONFIG_DIR / "batching.config"
DEFAULT_MONITORING_PATH = "/monitoring/prometheus/metrics"
SHUTDOWN_GRACE_SECONDS = 5.0


@dataclass
class ServerOptions:
    model_base_path: str
    model_name: str = MODEL_NAME
    host: str = "127.0.0.1"
    port: int = 8500
    rest_port: int = 8501                       # 0: no REST listener
    poll_seconds: float = 1.0
    enable_batching: bool = False
    batching_parameters_file: str = str(DEFAULT_BATCHING_FILE)
    max_message_mb: float = 64
    grpc_workers: int = 16
    monitoring_path: str | None = DEFAULT_MONITORING_PATH

    @property
    def max_message_bytes(self) -> int:
        return int(self.max_message_mb * 1024 * 1024)


class ModelServer:
    def __init__(self, options: ServerOptions):
        if not os.path.isdir(options.model_base_path):
            raise FileNotFoundError(f"model base path {options.model_base_path} is not a directory")
        self.options = options
        self.metrics = ServingMetrics(options.model_name)
        self.metrics.loaded_version.set(options.model_name, value=0)
        self._health = None
        self.manager = ServableManager(options.model_name, options.model_base_path,
                                       on_change=self._version_changed)
        self.batcher = None
        if options.enable_batching:
            params = BatchingParameters.from_file(options.batching_parameters_file)
            self.batcher = BatchScheduler(params, on_batch=self.metrics.batch_size.observe)
            log.info("batching on: %s", params)
        self.core = ServerCore(self.manager, self.batcher)
        self._stop_polling = threading.Event()
        self._poller = threading.Thread(target=self.manager.run, name="version-poller",
                                        args=(options.poll_seconds, self._stop_polling), daemon=True)
        self._grpc, self._health = build_grpc_server(
            self.core, self.metrics, f"{_bracket(options.host)}:{options.port}",
            options.max_message_bytes, options.grpc_workers)
        set_health(self._health, options.model_name, serving=False)
        self._rest = None
        if options.rest_port:
            self._rest = build_rest_server(self.core, self.metrics, options.host, options.rest_port,
                                           options.max_message_bytes, options.monitoring_path)
        self._rest_thread = None

    def start(self) -> None:
        o = self.options
        self._grpc.start()
        if self._rest is not None:
            self._rest_thread = threading.Thread(target=self._rest.serve_forever, name="rest",
                                                 kwargs={"poll_interval": 0.2}, daemon=True)
            self._rest_thread.start()
        self._poller.start()
        log.info("serving model %s from %s: gRPC on %s:%d%s", o.model_name, o.model_base_path,
                 o.host, o.port, f", REST on {o.host}:{o.rest_port}" if self._rest else "")

    def stop(self) -> None:
        set_health(self._health, self.options.model_name, serving=False)
        if self._rest is not None:
            self._rest.shutdown()
            self._rest.server_close()
        self._grpc.stop(SHUTDOWN_GRACE_SECONDS).wait()
        self._stop_polling.set()
        self._poller.join(timeout=30)
        if self.batcher is not None:
            self.batcher.stop()
        self.manager.unload_all()
        log.info("server stopped")

    def _version_changed(self, manager: ServableManager) -> None:
        versions = manager.available_versions()
        self.metrics.loaded_version.set(self.options.model_name,
                                        value=max(versions) if versions else 0)
        if self._health is not None:
            set_health(self._health, self.options.model_name, serving=bool(versions))


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def serve(options: ServerOptions) -> int:
    """Runs until SIGTERM/SIGINT; returns the process exit code."""
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set())
                for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        try:
            server = ModelServer(options)
        except (OSError, ValueError) as err:
            log.error("%s", err)
            return 2
        server.start()
        while not stop.wait(0.5):   # short waits keep the main thread responsive to signals
            pass
        log.info("stopping (signal received)")
        server.stop()
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
