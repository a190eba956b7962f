"""Property-based fuzzing of the live API from its own OpenAPI schema (schemathesis): every
operation, with data that fits the schema and data that does not, authenticated with a real
key, against uvicorn on loopback with the real Elasticsearch, Redis and worker. The one
property: no answer is a 5xx.

Every http(s) URL a case holds is rewritten to a closed loopback port before it is sent, so
neither the API nor the worker ever fetches from another host.
"""

from __future__ import annotations

import contextlib
import re
import sys
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import hypothesis
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase
from redis import Redis
from schemathesis import GenerationMode

from pipeline.ingest.ingestor import Ingestor
from pipeline.merchants.apikeys import ApiKeyStore
from tests.integration.helpers import api_server

MAX_EXAMPLES = 75  # per operation and mode: about 1,100 requests, about a minute on 2 cores
URL = re.compile(r"(?i)https?://[^\s\"'\\]*")
CLOSED_PORT_URL = "http://127.0.0.1:9/fuzz.jpg"


def _local_urls(value: Any) -> Any:
    if isinstance(value, str):
        return URL.sub(CLOSED_PORT_URL, value)
    if isinstance(value, dict):
        return {_local_urls(k): _local_urls(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_local_urls(v) for v in value]
    return value


@pytest.fixture(scope="module")
def live(settings, es, encoder, worker) -> Iterator[str]:
    Ingestor(settings, es=es, encoder=encoder).ensure_index()
    fuzz = settings.model_copy(update={"search_rate_limit": 100_000, "upload_rate_limit": 100_000})
    # belt and braces: any fetch the rewrite missed goes to a closed local port
    env = {"HTTP_PROXY": CLOSED_PORT_URL, "HTTPS_PROXY": CLOSED_PORT_URL, "NO_PROXY": ""}
    with api_server(fuzz, env=env) as base:
        yield base


def test_no_generated_request_gets_a_5xx(live, settings):
    key = ApiKeyStore(Redis.from_url(settings.redis_url), settings.redis_prefix).create("fuzz")
    schema = schemathesis.openapi.from_url(f"{live}/openapi.json")
    session = requests.Session()
    statuses: Counter[str] = Counter()
    by_operation: Counter[str] = Counter()
    server_errors: list[str] = []

    def send(case: schemathesis.Case) -> None:
        if isinstance(case.body, str | dict | list):
            case.body = _local_urls(case.body)
        response = case.call(base_url=live, session=session, timeout=60)
        statuses[f"{response.status_code // 100}xx"] += 1
        by_operation[f"{case.method} {case.operation.path} {response.status_code}"] += 1
        if response.status_code >= 500:
            server_errors.append(
                f"{case.method} {case.formatted_path} -> {response.status_code}: "
                f"{response.text[:300]}\n  {case.as_curl_command()[:600]}"
            )

    operations, started = 0, time.monotonic()
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            strategy = operation.as_strategy(generation_mode=mode, headers={"X-API-Key": key.key})
            run = hypothesis.settings(
                max_examples=MAX_EXAMPLES,
                deadline=None,
                database=None,
                derandomize=True,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
            )(hypothesis.given(case=strategy)(send))
            # Unsatisfiable: no invalid input exists for this operation (e.g. no parameters)
            with contextlib.suppress(hypothesis.errors.Unsatisfiable):
                run()
    total = sum(statuses.values())
    elapsed = time.monotonic() - started
    sys.stderr.write(
        f"\nfuzzer: {operations} operations, {total} requests in {elapsed:.0f} s, "
        f"{dict(statuses)}\n"
    )
    sys.stderr.write("".join(f"  {k}: {n}\n" for k, n in sorted(by_operation.items())))
    assert operations >= 9 and total >= 100
    assert not server_errors, "\n".join(server_errors[:20])
