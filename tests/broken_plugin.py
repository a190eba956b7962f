"""A broken third-party plugin "installed" in a directory: a ``*.dist-info`` whose entry points
name a missing module, a module that fails on import, and objects that break the contract.
Put the directory on ``sys.path`` (or ``PYTHONPATH`` for a worker) to install it."""

from __future__ import annotations

from pathlib import Path

ENTRY_POINTS = """\
[vitrine.encoders]
broken_missing = no_such_module_for_vitrine:factory
broken_import = broken_vitrine_plugin:factory
not_callable = ok_vitrine_plugin:NOT_CALLABLE
wrong_type = ok_vitrine_plugin:returns_a_string
bad_output = ok_vitrine_plugin:bad_output
text_without_tower = ok_vitrine_plugin:text_without_tower

[vitrine.processors]
broken_missing = no_such_module_for_vitrine:Processor
broken_import = broken_vitrine_plugin:Processor
not_a_processor = ok_vitrine_plugin:NOT_CALLABLE
clashing = ok_vitrine_plugin:ClashingProcessor
"""

BROKEN_MODULE = 'raise ImportError("this plugin needs libfoo 9, which is not installed")\n'

OK_MODULE = '''\
import numpy as np

from pipeline.encoders import Encoder
from pipeline.ingest.processors import Processor

NOT_CALLABLE = 42


def returns_a_string(settings):
    return "not an encoder"


class BadOutputEncoder(Encoder):
    """Returns unnormalised vectors: the pipeline must refuse them."""

    model_id = "test:bad-output:4"
    dim = 4

    def embed_images(self, images):
        return np.full((len(images), 4), 3.0, dtype=np.float32)


def bad_output(settings):
    return BadOutputEncoder()


class ClaimsText(BadOutputEncoder):
    capabilities = frozenset({"image", "text"})


def text_without_tower(settings):
    return ClaimsText()


class ClashingProcessor(Processor):
    name = "clashing"
    fields = {"title": {"type": "keyword"}}

    def process(self, item):
        item.extra["title"] = "overwritten"
'''


def write_broken_distribution(root: Path) -> Path:
    """Write the plugin under ``root`` and return ``root`` (the directory to put on the path)."""
    info = root / "broken_vitrine_plugin-0.0.1.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: broken-vitrine-plugin\nVersion: 0.0.1\n"
    )
    (info / "entry_points.txt").write_text(ENTRY_POINTS)
    (root / "broken_vitrine_plugin.py").write_text(BROKEN_MODULE)
    (root / "ok_vitrine_plugin.py").write_text(OK_MODULE)
    return root
