"""Start a real ``vitrine worker`` process for given settings and wait until it answers.

Used by the demo and by the integration tests: both need a worker that runs exactly as in
production (separate process, the configured pool: ``worker_pool`` travels in the settings).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO

from celery import Celery

from pipeline.jobs import create_celery
from pipeline.settings import VitrineSettings


@contextmanager
def worker_process(
    settings: VitrineSettings,
    *,
    concurrency: int | None = None,
    output: IO | None = None,
    timeout_s: float = 120,
) -> Iterator[Celery]:
    """Yield a Celery client app once the worker answers a ping; stop the worker on exit."""
    node = f"{settings.queue}-{os.getpid()}@{socket.gethostname()}"
    # the settings are the whole configuration: inherited VITRINE_* (e.g. other credentials) are not
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("VITRINE_")}
    env = {**inherited, **settings.to_env()}
    cmd = [sys.executable, "-m", "pipeline.cli", "worker"]
    if concurrency is not None:  # else the pool's default
        cmd.append(f"--concurrency={concurrency}")
    process = subprocess.Popen(
        [*cmd, f"--hostname={node}"],
        env=env,
        stdout=output,
        stderr=subprocess.STDOUT if output else None,
    )
    celery_app = create_celery(settings)
    try:
        deadline = time.monotonic() + timeout_s
        while not celery_app.control.ping(destination=[node], timeout=1.0):
            if process.poll() is not None:
                raise RuntimeError(f"worker exited with code {process.returncode}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"worker did not answer within {timeout_s:.0f}s")
        yield celery_app
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
