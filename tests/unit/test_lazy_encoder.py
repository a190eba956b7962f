"""``LazyEncoder``: the one way a process holds its model, loaded on first use only."""

import pytest

from pipeline.encoders import EncoderError, LazyEncoder
from pipeline.ingest.ingestor import Ingestor
from pipeline.search.searcher import Searcher
from pipeline.settings import VitrineSettings
from tests.unit.test_processors import MeanColourEncoder

UNKNOWN = VitrineSettings(encoder="no-such-encoder")


def test_nothing_is_loaded_before_the_first_call():
    lazy = LazyEncoder(UNKNOWN)  # building it loads nothing, so no error yet
    with pytest.raises(EncoderError, match="no-such-encoder"):
        lazy()


def test_a_given_encoder_is_used_and_shared():
    encoder = MeanColourEncoder()
    ingestor = Ingestor(UNKNOWN, es=object(), encoder=encoder)
    assert ingestor.encoder() is encoder
    assert Searcher(UNKNOWN, object(), ingestor.encoder).encoder is ingestor.encoder
    assert Searcher(UNKNOWN, object(), encoder).encoder() is encoder
