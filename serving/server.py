"""The local model server: managers + batching + gRPC and REST front ends.

`btmri serve` runs `serve(options)`: one model from --model-base-path, or the models
of a TF Serving model config file (--model-config-file: model_config.py), each with
its version policy, and their version labels (models.py). The server answers from the moment it
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
import sys
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
from serving.model_config import ModelConfig, read_model_config_file
from serving.models import ModelSet
from serving.prometheus_metrics import ServingMetrics
from serving.rest_api import build_rest_server

log = logging.getLogger("serving")

CONFIG_DIR = Path(__file__).resolve().parent / "config"
DEFAULT_BATCHING_FILE = CONFIG_DIR / "batching.config"
SHUTDOWN_GRACE_SECONDS = 5.0


def request_limits(options: ServerOptions) -> RequestLimits:
    """The per-request limits the options ask for."""
    return RequestLimits(
        max_rows=options.max_rows,
        max_request_bytes=options.max_message_bytes,
        max_response_bytes=options.max_response_bytes,
        max_json_values=options.max_json_values,
    )


def model_configs(options: ServerOptions) -> list[ModelConfig]:
    """The models to serve: the config file's, or the one of --model-base-path/--model-name."""
    if options.model_config_file:
        configs = read_model_config_file(options.model_config_file)
    else:
        configs = [ModelConfig(options.model_name, options.model_base_path)]
    for config in configs:
        if not os.path.isdir(config.base_path):
            raise FileNotFoundError(
                f"model base path {config.base_path} of model {config.name} is not a directory"
            )
    return configs


class ModelServer:
    def __init__(self, options: ServerOptions):
        options.check()
        self.options = options
        self.configs = model_configs(options)
        limits = request_limits(options)
        self.metrics = ServingMetrics(tuple(c.name for c in self.configs))
        for config in self.configs:
            self.metrics.loaded_version.set(config.name, value=0)
        self._health = None
        policy = LoadPolicy(
            max_retries=options.max_load_retries,
            retry_interval_seconds=options.load_retry_interval_seconds,
            settle_seconds=max(2.0, 2 * options.poll_seconds),
        )
        canary = (lambda servable: check_servable(servable, limits)) if options.canary else None
        self._load_policy, self._canary_check = policy, canary
        self._config_text = (
            open(options.model_config_file, encoding="utf-8").read() if options.model_config_file else None
        )
        self.models = ModelSet(
            [self._make_manager(c) for c in self.configs],
            labels={c.name: c.labels for c in self.configs},
            allow_unavailable=options.allow_version_labels_for_unavailable_models,
        )
        self.batcher = None
        if options.enable_batching:
            params = BatchingParameters.from_file(
                options.batching_parameters_file or str(DEFAULT_BATCHING_FILE)
            )
            self.batcher = BatchScheduler(params, on_batch=self.metrics.batch_size.observe)
            log.info("batching on: %s", params)
        self.request_log = None
        if options.request_log_dir:
            from serving.request_log import RequestLog

            self.request_log = RequestLog(options, self.metrics)
        self.core = ServerCore(self.models, self.batcher, limits, self.request_log)
        self._stop_polling = threading.Event()
        self._poller = threading.Thread(target=self._poll, name="version-poller", daemon=True)
        self._executor = ThreadPoolExecutor(max_workers=options.grpc_workers, thread_name_prefix="request")
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
            self.core,
            self.metrics,
            f"{_bracket(o.host)}:{o.port}",
            self.core.limits,
            self._executor,
            o.client_timeout_seconds,
            o.max_connections,
        )
        for config in self.configs:
            await set_health(self._health, config.name, serving=False)
        if o.rest_port:
            self._rest = await build_rest_server(
                self.core,
                self.metrics,
                o.host,
                o.rest_port,
                self._executor,
                o.monitoring_path,
                o.client_timeout_seconds,
                o.max_connections,
            )

    async def _start(self) -> None:
        await self._grpc.start()
        if self._rest is not None:
            await self._rest.start()

    def start(self) -> None:
        o = self.options
        self._call(self._start())
        self._poller.start()
        for c in self.configs:
            log.info(
                "serving model %s from %s (%s%s)",
                c.name,
                c.base_path,
                c.policy.describe(),
                "; labels " + ", ".join(f"{k} -> {v}" for k, v in sorted(c.labels.items()))
                if c.labels
                else "",
            )
        log.info("gRPC on %s:%d%s", o.host, o.port, f", REST on {o.host}:{o.rest_port}" if self._rest else "")

    def stop(self, grace: float = SHUTDOWN_GRACE_SECONDS) -> None:
        """Returns within about `grace` seconds, even with connections open."""
        deadline = time.monotonic() + grace
        try:
            self._call(self._stop_listeners(grace), timeout=grace + 5)
        except Exception as err:  # a listener that will not close must not block the exit
            log.warning("stopping the listeners: %s", err)
        self._stop_polling.set()
        self._poller.join(timeout=max(0.1, deadline - time.monotonic()))
        if self.batcher is not None:
            self.batcher.stop()
        self._executor.shutdown(wait=False, cancel_futures=True)
        self.models.unload_all(wait_seconds=max(0.0, deadline - time.monotonic()))
        if self.request_log is not None:  # what is queued is written, the open file closed
            self.request_log.close(timeout=max(1.0, deadline - time.monotonic()))
        self._close_loop()
        log.info("server stopped")

    async def _stop_listeners(self, grace: float) -> None:
        for config in self.configs:
            await set_health(self._health, config.name, serving=False)
        stops = [self._grpc.stop(grace)]
        if self._rest is not None:
            stops.append(self._rest.stop(grace))
        await asyncio.gather(*stops)

    def _close_loop(self) -> None:
        if self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._loop_thread.join(timeout=5)

    def _make_manager(self, config: ModelConfig) -> ServableManager:
        return ServableManager(
            config.name,
            config.base_path,
            on_change=self._version_changed,
            policy=self._load_policy,
            canary=self._canary_check,
            versions=config.policy,
        )

    def _poll(self) -> None:
        """Versions every --poll-seconds; the model config file every
        --model-config-file-poll-wait-seconds (0: read once, at start-up)."""
        wait = self.options.model_config_file_poll_wait_seconds
        next_reload = time.monotonic() + wait
        while not self._stop_polling.is_set():
            if self.options.model_config_file and wait > 0 and time.monotonic() >= next_reload:
                next_reload = time.monotonic() + wait
                try:
                    self.reload_config()
                except Exception:  # a bad edit must not end version management
                    log.exception("reloading %s failed", self.options.model_config_file)
            self.models.poll()
            self._stop_polling.wait(self.options.poll_seconds)

    def reload_config(self) -> bool:
        """Applies the model config file if it changed; a file that does not parse, or
        names a missing base path, is logged and the running config kept (as TF Serving
        does). True when a new config was applied."""
        path = self.options.model_config_file
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except OSError as err:
            log.error(
                "cannot read the model config file %s: %s; keeping the running config",
                path,
                err.strerror or err,
            )
            return False
        if text == self._config_text:
            return False
        self._config_text = text
        try:
            configs = model_configs(self.options)
        except (OSError, ValueError) as err:
            log.error("%s; keeping the running config", err)
            return False
        log.info("model config %s changed: applying it", path)
        self.metrics.model_names = tuple(
            dict.fromkeys([*self.metrics.model_names, *(c.name for c in configs)])
        )
        removed = self.models.reconfigure(configs, self._make_manager)
        self.configs = configs
        for name in removed:
            self.metrics.loaded_version.set(name, value=0)
            if self._health is not None and self._loop.is_running():
                asyncio.run_coroutine_threadsafe(
                    set_health(self._health, name, serving=False, whole_server=self._all_models_serving()),
                    self._loop,
                )
        return True

    def _version_changed(self, manager: ServableManager) -> None:
        versions = manager.available_versions()
        self.metrics.loaded_version.set(manager.model_name, value=max(versions) if versions else 0)
        if self._health is not None and self._loop.is_running():
            asyncio.run_coroutine_threadsafe(
                set_health(
                    self._health,
                    manager.model_name,
                    serving=bool(versions),
                    whole_server=self._all_models_serving(),
                ),
                self._loop,
            )

    def _all_models_serving(self) -> bool:
        models = getattr(self, "models", None)
        return models is not None and all(m.available_versions() for m in models.managers())


def _log_loop_error(loop, context: dict) -> None:
    """asyncio's own complaints (e.g. a socket reset mid-write): one line, no traceback."""
    error = context.get("exception")
    log.info(
        "I/O loop: %s%s", context.get("message", ""), f" ({type(error).__name__}: {error})" if error else ""
    )


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def serve(options: ServerOptions, prog: str = "btmri serve") -> int:
    """Runs until SIGTERM/SIGINT; returns the process exit code (2: it could not start)."""
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        try:
            server = ModelServer(options)
        except (OSError, ValueError) as err:
            print(f"{prog}: error: {err}", file=sys.stderr, flush=True)
            return 2
        server.start()
        while not stop.wait(0.5):  # short waits keep the main thread responsive to signals
            pass
        log.info("stopping (signal received)")
        server.stop()
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
