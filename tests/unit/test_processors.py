"""The processor chain with a deterministic fake encoder: per-item failures, batching, plugins."""

from collections.abc import Sequence

import numpy as np
import pytest
from PIL import Image

from pipeline.documents import Product
from pipeline.encoders import Encoder, l2_normalise
from pipeline.ingest.processors import (
    IngestError,
    IngestItem,
    Processor,
    ProcessorChain,
    ProcessorContext,
    available_processors,
)
from pipeline.plugins import PluginError
from pipeline.settings import VitrineSettings


class MeanColourEncoder(Encoder):
    """Embeds an image as its mean RGB colour; records batch sizes."""

    model_id = "test:mean-colour:3"
    dim = 3

    def __init__(self) -> None:
        self.batches: list[int] = []

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        self.batches.append(len(images))
        return l2_normalise(
            np.array([np.asarray(i, dtype=np.float32).mean((0, 1)) + 1 for i in images])
        )

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        raise NotImplementedError


def items_for(tmp_path, specs) -> list[IngestItem]:
    items = []
    for i, spec in enumerate(specs):
        path = tmp_path / f"{i}.png"
        if isinstance(spec, bytes):
            path.write_bytes(spec)
        else:
            Image.new("RGB", spec, (255, 0, 0)).save(path)
        product = Product(product_id=f"p{i}", merchant_id="m", title="t", images=[str(path)])
        items.append(IngestItem(product, 0))
    return items


@pytest.fixture
def encoder():
    return MeanColourEncoder()


def chain(encoder, **settings) -> ProcessorChain:
    s = VitrineSettings(min_image_side=50, **settings)
    return ProcessorChain(s.processors, ProcessorContext(s, lambda: encoder))


def test_good_items_are_embedded_in_one_batch_and_bad_ones_marked(tmp_path, encoder):
    items = items_for(tmp_path, [(60, 60), b"not an image", (80, 40), b""])
    chain(encoder).run(items)
    assert [i.ok for i in items] == [True, False, True, False]
    assert items[1].error.reason == "not_an_image" and items[3].error.reason == "empty"
    assert encoder.batches == [2]
    np.testing.assert_allclose(
        items[0].vector, l2_normalise(np.array([[256.0, 1, 1]]))[0], rtol=1e-5
    )
    # one-colour test images are blank; the 80x40 one is also under min_image_side
    assert items[0].quality_flags == ["blank"]
    assert items[2].quality_flags == ["low_resolution", "blank"]


def test_builtin_processors_are_registered_as_entry_points():
    builtin = {"decode_image", "image_quality", "embed_image", "ocr", "phash", "auto_tag"}
    assert builtin <= set(available_processors())


def test_unknown_or_incomplete_chains_are_refused(encoder):
    with pytest.raises(PluginError, match="unknown vitrine.processors plugin 'nope'; installed: "):
        chain(encoder, processors=["decode_image", "nope", "embed_image"])
    with pytest.raises(PluginError, match="embed_image"):
        chain(encoder, processors=["decode_image"])


def test_a_processor_failure_skips_later_processors_for_that_item(tmp_path, encoder):
    class RejectWide(Processor):
        name = "reject_wide"

        def process(self, item):
            if item.image.width > item.image.height:
                raise IngestError("too_wide", "wider than tall")

    items = items_for(tmp_path, [(60, 60), (90, 60)])
    c = chain(encoder)
    c.processors.insert(1, RejectWide(c.processors[0].context))
    c.run(items)
    assert items[0].vector is not None
    assert items[1].error.reason == "too_wide" and items[1].vector is None
    assert encoder.batches == [1]


def test_slow_image_hosts_fail_only_their_own_items_within_the_batch_deadline(tmp_path, encoder):
    """Image fetches of one batch share a deadline of half the task's soft time limit, so a
    host that drips bytes cannot hold the batch until Celery kills it."""
    from tests.fetch_servers import FetchTestServer

    server = FetchTestServer(drip_interval_s=0.2)
    server.images["slow"] = b"x" * 1000  # 200 s at this rate
    try:
        items = items_for(tmp_path, [(60, 60), (70, 70)])
        slow = Product(
            product_id="slow", merchant_id="m", title="t", images=[server.url("/drip/slow")]
        )
        items.insert(1, IngestItem(slow, 0))
        chain(
            encoder, fetch_allow=["127.0.0.1"], image_fetch_timeout_s=60, task_soft_time_limit_s=2
        ).run(items)
    finally:
        server.close()
    assert [i.ok for i in items] == [True, False, True]
    assert (items[1].error.reason, items[1].error.transient) == ("fetch_timeout", True)
    assert encoder.batches == [2]


def test_image_urls_go_through_the_fetch_guard(tmp_path, encoder):
    refused = Product(
        product_id="p", merchant_id="m", title="t", images=["http://127.0.0.1:9/img.png"]
    )
    items = [IngestItem(refused, 0), *items_for(tmp_path, [(60, 60)])]
    chain(encoder).run(items)  # default settings: nothing allow-listed
    assert items[0].error.reason == "fetch_refused" and items[1].ok


def test_builtin_processors_declare_document_fields_that_exist():
    """``writes`` is checked against the one document model, so a built-in cannot claim a field
    the index does not have, and the enrichment processors each declare what they fill."""
    from pipeline.documents import ProductDocument
    from pipeline.ingest.enrich.auto_tag import AutoTag
    from pipeline.ingest.enrich.ocr import Ocr
    from pipeline.ingest.enrich.phash import PerceptualHash
    from pipeline.ingest.enrich.quality import ImageQuality

    for processor in (AutoTag, Ocr, PerceptualHash, ImageQuality):
        assert processor.writes, processor.name
        assert set(processor.writes) <= set(ProductDocument.model_fields), processor.name
