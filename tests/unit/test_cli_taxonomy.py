"""``vitrine taxonomy show|explain`` as a user runs them."""

import os
import subprocess
import sys

from PIL import Image


def run_cli(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "taxonomy", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_show_lists_facets_thresholds_and_labels():
    result = run_cli("show")
    assert result.returncode == 0, result.stderr
    assert "category -> auto_category: threshold 0.5" in result.stdout
    assert "colour -> auto_tags (colour:<label>)" in result.stdout
    assert "aliases: bags, handbags" in result.stdout


def test_explain_prints_each_facet_and_what_would_be_written(tiny_checkpoint, tmp_path):
    image = tmp_path / "red.png"
    Image.new("RGB", (64, 64), (200, 20, 20)).save(image)
    env = {
        "VITRINE_MODEL_ARCH": "vitrine-tiny-vit",
        "VITRINE_MODEL_PRETRAINED": str(tiny_checkpoint),
        "VITRINE_HOME": str(tmp_path / "home"),
    }
    result = run_cli("explain", str(image), "--category", "Bags", **env)
    assert result.returncode == 0, result.stderr
    assert "random weights: these scores mean nothing" in result.stderr
    for facet in ("category", "colour", "material", "pattern", "style", "audience"):
        assert any(line.startswith(facet) for line in result.stdout.splitlines()), facet
    assert "auto_category:" in result.stdout and "auto_tags:" in result.stdout
    assert "merchant category 'Bags' -> label bag" in result.stdout
    assert list((tmp_path / "home" / "labels").glob("labels-*.npz"))  # cached for the next run

    missing = run_cli("explain", str(tmp_path / "none.png"), **env)
    assert missing.returncode == 1 and "Traceback" not in missing.stderr
