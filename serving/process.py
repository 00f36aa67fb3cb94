"""`btmri serve` in a child process on free ports: for tests, benchmarks and scripts.

    with ServerProcess(base_path, "--enable-batching") as server:
        PredictionClient(server.grpc_target) ...

    with ServerProcess(None, "--model-config-file", "models.config") as server: ...

Ready means gRPC health reports SERVING (a version is loaded; with a model config
file, a version of every model). With `fail_on_load_error` a version that fails to
load (GetModelStatus: END with an error) ends the wait at once with
`ModelLoadFailed`, its message the server's reason. Leaving the block sends
SIGTERM and waits; a server that does not stop is killed. The server's output
goes to `log_path` (default: a temp file, kept for reading after a failure).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc

from btmri import ONEDNN_SET_BY_PROJECT, ONEDNN_SWITCH
from btmri.spec import MODEL_NAME

HOST = "127.0.0.1"


def free_ports(count: int) -> list[int]:
    """Ports free right now (the OS picks them; held open together so they differ)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for s in sockets:
            s.bind((HOST, 0))
        return [s.getsockname()[1] for s in sockets]


class ModelLoadFailed(RuntimeError):
    """The server is up but a version of the model failed to load (or its warm-up or canary)."""


class ServerProcess:
    def __init__(
        self,
        base_path: str | Path | None,
        *extra_args: str,
        model_name: str = MODEL_NAME,
        log_path: str | Path | None = None,
        startup_timeout: float = 300.0,
        fail_on_load_error: bool = False,
        onednn: bool | None = None,
    ):
        """`base_path` None: the models come from a --model-config-file in `extra_args`.
        `onednn`: the server's oneDNN kernels on or off instead of TensorFlow's default
        (serving.cli.server_process_settings): to compare its answers exactly with ones
        computed elsewhere with those kernels (oneDNN and Eigen differ in the last digits,
        a Grad-CAM heatmap by about 2e-3)."""
        self.base_path = str(Path(base_path).resolve()) if base_path is not None else None
        self.extra_args = list(extra_args)
        self.model_name = model_name
        self.startup_timeout = startup_timeout
        self.fail_on_load_error = fail_on_load_error
        self.onednn = onednn
        self.log_path = (
            Path(log_path) if log_path else Path(tempfile.mkstemp(prefix="btmri-serve-", suffix=".log")[1])
        )
        self.port = self.rest_port = None
        self.process: subprocess.Popen | None = None

    @property
    def grpc_target(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def rest_url(self) -> str:
        return f"http://{HOST}:{self.rest_port}"

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def __enter__(self) -> ServerProcess:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        for _ in range(3):  # another process may grab a free port before the server binds it
            self.port, self.rest_port = free_ports(2)
            self._spawn()
            if self._wait_ready():
                return
            if "cannot listen" not in self.log_text():
                break
        code = self.stop()
        raise RuntimeError(
            f"model server did not become ready (exit code {code}); "
            f"log {self.log_path}:\n{self.log_text()[-3000:]}"
        )

    def child_environment(self) -> dict[str, str]:
        """The server process's environment: this one's, with `onednn` if given."""
        env = dict(os.environ, PYTHONUNBUFFERED="1", TF_CPP_MIN_LOG_LEVEL="2")
        if self.onednn is not None:
            # Set without the project's mark, the server keeps it as a user's choice.
            env.pop(ONEDNN_SET_BY_PROJECT, None)
            env[ONEDNN_SWITCH[0]] = "1" if self.onednn else "0"
        return env

    def _spawn(self) -> None:
        model = (
            ["--model-base-path", self.base_path, "--model-name", self.model_name]
            if self.base_path is not None
            else []
        )
        command = [
            sys.executable,
            "-m",
            "serving",
            *model,
            "--host",
            HOST,
            "--port",
            str(self.port),
            "--rest-port",
            str(self.rest_port),
            *self.extra_args,
        ]
        env = self.child_environment()
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + self.startup_timeout
        service = self.model_name if self.base_path is not None else ""
        with grpc.insecure_channel(self.grpc_target) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    return False
                try:
                    answer = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=1.0)
                    if answer.status == health_pb2.HealthCheckResponse.SERVING:
                        return True
                    if self.fail_on_load_error:
                        self._raise_load_error(channel)
                except grpc.RpcError:
                    pass  # not listening yet
                time.sleep(0.25)
        return False

    def _raise_load_error(self, channel) -> None:
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = self.model_name
        try:
            answer = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(request, timeout=1.0)
        except grpc.RpcError:
            return  # no version seen yet
        for status in answer.model_version_status:
            if status.state == get_model_status_pb2.ModelVersionStatus.END and status.status.error_code != 0:
                self.stop()
                raise ModelLoadFailed(
                    f"version {status.version} of {self.model_name} failed to "
                    f"load: {status.status.error_message}"
                )

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, then SIGKILL after `timeout`; returns the exit code."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode
