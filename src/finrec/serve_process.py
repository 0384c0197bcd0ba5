"""``finrec serve`` as a child process on a free loopback port, stopped by its PID: for the tests,
the benchmarks and scripts that need a real server rather than an in-process app.

>>> with ServerProcess("models/default", "data/bank") as server:
...     server.wait_ready()
...     httpx.post(f"{server.base_url}/recommendations", json={"customer_id": "C0000001"})
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """Starts ``python -m finrec.cli serve`` on 127.0.0.1; output goes to ``log_path``. ``env``
    adds environment variables, e.g. ``FINREC_SERVE_BODY_TIMEOUT_S`` (see ``finrec.serve.run``).
    With ``root`` (a model registry) it serves the registry's promoted version instead of ``model_dir``."""

    def __init__(
        self,
        model_dir,
        data_dir=None,
        log_path=None,
        workers: int = 1,
        verbose: bool = False,
        env: dict[str, str] | None = None,
        root=None,
    ):
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = Path(log_path) if log_path else Path(tempfile.mkstemp(prefix="finrec-serve-", suffix=".log")[1])
        self.early: list[tuple[int, object]] = []  # /ready answers seen while the model loads
        source = ["--root", str(root)] if root is not None else ["--model", str(model_dir)]
        command = [
            sys.executable,
            "-m",
            "finrec.cli",
            *(["-v"] if verbose else []),
            "serve",
            *source,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            str(workers),
        ]
        if data_dir is not None:
            command += ["--data", str(data_dir)]
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})},
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def _ready_once(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.base_url}/ready", timeout=2) as response:
                return response.status == 200
        except urllib.error.HTTPError as error:  # 503 while loading
            body = error.read()
            try:
                self.early.append((error.code, json.loads(body)))
            except ValueError:
                self.early.append((error.code, body))
            return False
        except (urllib.error.URLError, OSError):
            return False

    def wait_ready(self, timeout: float = 180.0, consecutive: int = 1) -> float:
        """Seconds until ``/ready`` answered 200 ``consecutive`` times in a row (with several
        workers, each new connection may reach another process). Raises ``RuntimeError`` with
        the end of the log if the server exits or is not ready in time."""
        start = time.monotonic()
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited ({self.process.returncode}): {self.log_text()[-2000:]}")
            if all(self._ready_once() for _ in range(consecutive)):
                return time.monotonic() - start
            if time.monotonic() - start > timeout:
                self.stop()
                raise RuntimeError(f"the server was not ready after {timeout:.0f}s: {self.log_text()[-2000:]}")
            time.sleep(0.2)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
