"""The local model server: manager + batching + gRPC and REST front ends.

`btmri serve` runs `serve(options)`. The server answers from the moment it
listens (status queries report LOADING); gRPC health says SERVING once a
version is available. One event loop thread does all network I/O for both
protocols (grpc.aio and an asyncio HTTP server), so waiting clients hold no
thread; complete requests run on `grpc_workers` worker threads. SIGTERM/SIGINT
stop it cleanly: health goes NOT_SERVING, listeners close, idle connections are
closed at once and in-flight requests get a grace period.
"""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from btmri.documents import ServerOptions
from serving.batching import BatchingParameters, BatchScheduler
from serving.canary import check_servable
from serving.core import ServerCore
from serving.grpc_api import build_grpc_server, set_health
from serving.limits import RequestLimits
from serving.manager import LoadPolicy, ServableManager
from serving.prometheus_metrics import ServingMetrics
from serving.rest_api import build_rest_server

log = logging.getLogger("serving")

CONFIG_DIR = Path(__file__).resolve().parent / "config"
DEFAULT_BATCHING_FILE = CONFIG_DIR / "batching.config"
SHUTDOWN_GRACE_SECONDS = 5.0


def request_limits(options: ServerOptions) -> RequestLimits:
    """The per-request limits the options ask for."""
    return RequestLimits(max_rows=options.max_rows, max_request_bytes=options.max_message_bytes,
                         max_response_bytes=options.max_response_bytes,
                         max_json_values=options.max_json_values)


class ModelServer:
    def __init__(self, options: ServerOptions):
        options.check()
        if not os.path.isdir(options.model_base_path):
            raise FileNotFoundError(f"model base path {options.model_base_path} is not a directory")
        self.options = options
        limits = request_limits(options)
        self.metrics = ServingMetrics(options.model_name)
        self.metrics.loaded_version.set(options.model_name, value=0)
        self._health = None
        policy = LoadPolicy(max_retries=options.max_load_retries,
                            retry_interval_seconds=options.load_retry_interval_seconds,
                            settle_seconds=max(2.0, 2 * options.poll_seconds))
        canary = (lambda servable: check_servable(servable, limits)) if options.canary else None
        self.manager = ServableManager(options.model_name, options.model_base_path,
                                       on_change=self._version_changed, policy=policy,
                                       canary=canary)
        self.batcher = None
        if options.enable_batching:
            params = BatchingParameters.from_file(
                options.batching_parameters_file or str(DEFAULT_BATCHING_FILE))
            self.batcher = BatchScheduler(params, on_batch=self.metrics.batch_size.observe)
            log.info("batching on: %s", params)
        self.request_log = None
        if options.request_log_dir:
            from serving.request_log import RequestLog
            self.request_log = RequestLog(options, self.metrics)
        self.core = ServerCore(self.manager, self.batcher, limits, self.request_log)
        self._stop_polling = threading.Event()
        self._poller = threading.Thread(target=self.manager.run, name="version-poller",
                                        args=(options.poll_seconds, self._stop_polling), daemon=True)
        self._executor = ThreadPoolExecutor(max_workers=options.grpc_workers,
                                            thread_name_prefix="request")
        self._loop = asyncio.new_event_loop()
        self._loop.set_exception_handler(_log_loop_error)
        self._loop_thread = threading.Thread(target=self._loop.run_forever, name="io", daemon=True)
        self._loop_thread.start()
        self._grpc = self._rest = None
        try:
            self._call(self._bind())
        except BaseException:
            self._close_loop()
            raise

    def _call(self, coroutine, timeout: float | None = 60.0):
        """Runs a coroutine on the I/O loop and waits for its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    async def _bind(self) -> None:
        o = self.options
        self._grpc, self._health = build_grpc_server(
            self.core, self.metrics, f"{_bracket(o.host)}:{o.port}", self.core.limits,
            self._executor, o.client_timeout_seconds, o.max_connections)
        await set_health(self._health, o.model_name, serving=False)
        if o.rest_port:
            self._rest = await build_rest_server(
                self.core, self.metrics, o.host, o.rest_port, self._executor, o.monitoring_path,
                o.client_timeout_seconds, o.max_connections)

    async def _start(self) -> None:
        await self._grpc.start()
        if self._rest is not None:
            await self._rest.start()

    def start(self) -> None:
        o = self.options
        self._call(self._start())
        self._poller.start()
        log.info("serving model %s from %s: gRPC on %s:%d%s", o.model_name, o.model_base_path,
                 o.host, o.port, f", REST on {o.host}:{o.rest_port}" if self._rest else "")

    def stop(self, grace: float = SHUTDOWN_GRACE_SECONDS) -> None:
        """Returns within about `grace` seconds, even with connections open."""
        deadline = time.monotonic() + grace
        try:
            self._call(self._stop_listeners(grace), timeout=grace + 5)
        except Exception as err:   # a listener that will not close must not block the exit
            log.warning("stopping the listeners: %s", err)
        self._stop_polling.set()
        self._poller.join(timeout=max(0.1, deadline - time.monotonic()))
        if self.batcher is not None:
            self.batcher.stop()
        self._executor.shutdown(wait=False, cancel_futures=True)
        self.manager.unload_all(wait_seconds=max(0.0, deadline - time.monotonic()))
        if self.request_log is not None:   # what is queued is written, the open file closed
            self.request_log.close(timeout=max(1.0, deadline - time.monotonic()))
        self._close_loop()
        log.info("server stopped")

    async def _stop_listeners(self, grace: float) -> None:
        await set_health(self._health, self.options.model_name, serving=False)
        stops = [self._grpc.stop(grace)]
        if self._rest is not None:
            stops.append(self._rest.stop(grace))
        await asyncio.gather(*stops)

    def _close_loop(self) -> None:
        if self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._loop_thread.join(timeout=5)

    def _version_changed(self, manager: ServableManager) -> None:
        versions = manager.available_versions()
        self.metrics.loaded_version.set(self.options.model_name,
                                        value=max(versions) if versions else 0)
        if self._health is not None and self._loop.is_running():
            asyncio.run_coroutine_threadsafe(
                set_health(self._health, self.options.model_name, serving=bool(versions)),
                self._loop)


def _log_loop_error(loop, context: dict) -> None:
    """asyncio's own complaints (e.g. a socket reset mid-write): one line, no traceback."""
    error = context.get("exception")
    log.info("I/O loop: %s%s", context.get("message", ""),
             f" ({type(error).__name__}: {error})" if error else "")


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
