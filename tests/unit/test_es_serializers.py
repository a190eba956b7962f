"""The Elasticsearch client serialises with orjson, single requests and bulk/msearch bodies."""

import json
from datetime import UTC, datetime

import numpy as np

from pipeline.es.client import OrjsonNdjsonSerializer, make_client
from pipeline.settings import VitrineSettings


def test_the_client_uses_orjson_for_json_and_ndjson():
    serializers = make_client(VitrineSettings()).transport.serializers
    assert type(serializers.get_serializer("application/json")).__name__ == "OrjsonSerializer"
    ndjson = serializers.get_serializer("application/x-ndjson")
    assert isinstance(ndjson, OrjsonNdjsonSerializer)


def test_ndjson_lines_carry_numpy_vectors_and_dates_as_elasticsearch_reads_them():
    vector = np.array([0.25, -1.5, 3.0], dtype=np.float32)
    at = datetime(2026, 11, 23, 7, 30, tzinfo=UTC)
    body = OrjsonNdjsonSerializer().dumps(
        [{"index": {"_id": "a"}}, {"v": vector, "n": np.int64(3), "at": at}]
    )
    lines = body.decode().strip().split("\n")
    assert [json.loads(line) for line in lines] == [
        {"index": {"_id": "a"}},
        {"v": [0.25, -1.5, 3.0], "n": 3, "at": "2026-11-23T07:30:00+00:00"},
    ]
    assert OrjsonNdjsonSerializer().loads(body) == [json.loads(line) for line in lines]
