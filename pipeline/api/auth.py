"""Merchant authentication (API keys) and rate limits, as FastAPI dependencies.

A key is sent as ``X-API-Key: <key>`` or ``Authorization: Bearer <key>``. Its merchant is who
the request acts for: product ids in URLs and bodies are always that merchant's.

Limits: writes count per API key; searches and embeds count per API key when one is sent, and
per client address otherwise. Counters live in Redis, so without Redis these routes answer 503.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request, Response
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from pipeline.api.deps import Services
from pipeline.api.errors import Problem
from pipeline.fetch import FetchPolicy
from pipeline.images import is_http_url
from pipeline.merchants.apikeys import ApiKey
from pipeline.merchants.ratelimit import RateLimiter
from pipeline.settings import VitrineSettings

_api_key_header = APIKeyHeader(
    name="X-API-Key", auto_error=False, description="Merchant API key (`vitrine keys create`)."
)
_bearer = HTTPBearer(auto_error=False, description="The same API key as a bearer token.")
_CHALLENGE = {"WWW-Authenticate": "Bearer"}


def optional_key(
    services: Services,
    api_key: Annotated[str | None, Depends(_api_key_header)] = None,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)] = None,
) -> ApiKey | None:
    """The caller's key record, None when no key is sent; 401 when unknown or revoked."""
    key = api_key or (bearer.credentials if bearer else None)
    if not key:
        return None
    info = services.keys.lookup(key)
    if info is None:
        raise Problem("invalid_api_key", "invalid or revoked API key", headers=_CHALLENGE)
    return info


def current_key(key: Annotated[ApiKey | None, Depends(optional_key)]) -> ApiKey:
    """The calling merchant's key record; 401 when missing, unknown or revoked."""
    if key is None:
        raise Problem(
            "missing_api_key",
            "missing API key: send it as 'X-API-Key: <key>' or 'Authorization: Bearer <key>'",
            headers=_CHALLENGE,
        )
    return key


def _count(response: Response, limiter: RateLimiter, subject: str, what: str) -> None:
    """Count one hit of ``subject``; 429 with ``Retry-After`` when over the limit."""
    decision = limiter.hit(subject)
    headers = {
        "X-RateLimit-Limit": str(decision.limit),
        "X-RateLimit-Remaining": str(decision.remaining),
        "X-RateLimit-Reset": str(decision.reset_s),
    }
    if not decision.allowed:
        raise Problem(
            "rate_limited",
            f"{what} rate limit of {decision.limit} per {limiter.window_s}s reached; "
            f"retry in {decision.retry_after_s}s",
            headers={**headers, "Retry-After": str(decision.retry_after_s)},
        )
    response.headers.update(headers)


def write_allowance(
    response: Response,
    key: Annotated[ApiKey, Depends(current_key)],
    services: Services,
) -> ApiKey:
    """Count a write (upload, change, delete) against the key's rate limit."""
    _count(response, services.limiter, key.key_id, "upload")
    return key


def search_allowance(
    request: Request,
    response: Response,
    key: Annotated[ApiKey | None, Depends(optional_key)],
    services: Services,
) -> ApiKey | None:
    """Count a search or embed against the key's limit, or the client address's without one."""
    if key is not None:
        _count(response, services.search_limiter, key.key_id, "search")
    else:
        address = request.client.host if request.client else "unknown"
        _count(response, services.address_limiter, address, "search")
    return key


def authorise_image_url(settings: VitrineSettings, caller: ApiKey | None, url: str) -> None:
    """Only callers with a valid API key make the server fetch an arbitrary ``image_url``.
    Anonymous callers may if ``anonymous_image_urls`` is on or the URL's host is allow-listed;
    otherwise 401, and nothing is fetched. Other than http(s) URLs are refused later, to
    everyone, as ``invalid_source``."""
    if caller is not None or not is_http_url(url) or settings.anonymous_image_urls:
        return
    if FetchPolicy.from_settings(settings).url_allowed(url):
        return
    raise Problem(
        "api_key_required",
        "image_url needs a valid API key; send the image itself as a file or as image_base64",
        headers=_CHALLENGE,
    )


Merchant = Annotated[ApiKey, Depends(current_key)]
Writer = Annotated[ApiKey, Depends(write_allowance)]
SearchCaller = Annotated[ApiKey | None, Depends(search_allowance)]
