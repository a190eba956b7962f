"""Operational errors reach the user as one clear line and exit status 1, not a traceback."""

import os
import subprocess
import sys


def run_cli(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_unreachable_elasticsearch(tiny_checkpoint):
    result = run_cli(
        "init-index",
        VITRINE_ES_URL="http://127.0.0.1:9",
        VITRINE_MODEL_ARCH="vitrine-tiny-vit",
        VITRINE_MODEL_PRETRAINED=str(tiny_checkpoint),
    )
    assert result.returncode == 1
    assert "error: Elasticsearch is not reachable" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_weights(tmp_path):
    result = run_cli("init-index", VITRINE_MODEL_PRETRAINED=str(tmp_path / "none.pt"))
    assert result.returncode == 1
    assert f"error: checkpoint {tmp_path / 'none.pt'} does not exist" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_weights_stop_the_api_in_one_line(tmp_path):
    """Not uvicorn's start-up traceback, once per API process."""
    for workers in ("1", "2"):
        result = run_cli(
            "serve", "--port", "9", "--workers", workers,
            VITRINE_MODEL_PRETRAINED=str(tmp_path / "none.pt"),
        )  # fmt: skip
        assert result.returncode == 1
        assert result.stderr.strip().splitlines()[-1] == (
            f"error: checkpoint {tmp_path / 'none.pt'} does not exist"
        )
        assert "Traceback" not in result.stderr
