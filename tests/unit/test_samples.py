"""The bundled sample catalogue is what `vitrine samples` generates."""

from pathlib import Path

from PIL import Image

from pipeline.dev.samples import write_sample_catalogue
from pipeline.ingest.catalogue import read_catalogue

BUNDLED = Path(__file__).resolve().parents[2] / "samples" / "catalogue"


def test_generated_catalogue_matches_the_bundled_one(tmp_path):
    generated = write_sample_catalogue(tmp_path)
    assert generated.read_text() == (BUNDLED / "catalogue.csv").read_text()
    catalogue = read_catalogue(generated)
    assert len(catalogue.products) == 25 and not catalogue.rejected
    assert {p.category for p in catalogue.products} == {"shoes", "bags", "shirts", "mugs", "hats"}
    for product in catalogue.products:
        with Image.open(product.images[0]) as image:
            assert image.size == (320, 320)
        assert (BUNDLED / "images" / Path(product.images[0]).name).exists()
