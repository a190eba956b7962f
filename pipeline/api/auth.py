"""Merchant authentication (API keys) and the upload rate limit, as FastAPI dependencies.

A key is sent as ``X-API-Key: <key>`` or ``Authorization: Bearer <key>``. Its merchant is who
the request acts for: product ids in URLs and bodies are always that merchant's.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Response, status
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from starlette.datastructures import Headers

from pipeline.api.deps import ApiState, Services
from pipeline.fetch import FetchPolicy
from pipeline.images import is_http_url
from pipeline.merchants.apikeys import ApiKey

_api_key_header = APIKeyHeader(
    name="X-API-Key", auto_error=False, description="Merchant API key (`vitrine keys create`)."
)
_bearer = HTTPBearer(auto_error=False, description="The same API key as a bearer token.")


def current_key(
    services: Services,
    api_key: Annotated[str | None, Depends(_api_key_header)] = None,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)] = None,
) -> ApiKey:
    """The calling merchant's key record; 401 when missing, unknown or revoked."""
    key = api_key or (bearer.credentials if bearer else None)
    if not key:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "missing API key: send it as 'X-API-Key: <key>' or 'Authorization: Bearer <key>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    info = services.keys.lookup(key)
    if info is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "invalid or revoked API key",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return info


def write_allowance(
    response: Response,
    key: Annotated[ApiKey, Depends(current_key)],
    services: Services,
) -> ApiKey:
    """Count a write (upload, change, delete) against the key's rate limit; 429 when over."""
    decision = services.limiter.hit(key.key_id)
    headers = {
        "X-RateLimit-Limit": str(decision.limit),
        "X-RateLimit-Remaining": str(decision.remaining),
        "X-RateLimit-Reset": str(decision.reset_s),
    }
    if not decision.allowed:
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS,
            f"upload rate limit of {decision.limit} per {services.limiter.window_s}s reached; "
            f"retry in {decision.retry_after_s}s",
            headers={**headers, "Retry-After": str(decision.retry_after_s)},
        )
    response.headers.update(headers)
    return key


Merchant = Annotated[ApiKey, Depends(current_key)]
Writer = Annotated[ApiKey, Depends(write_allowance)]


def authorise_image_url(state: ApiState, headers: Headers, url: str) -> None:
    """Only callers with a valid API key make the server fetch an arbitrary ``image_url``
    (blocking: Redis). Anonymous callers may if ``anonymous_image_urls`` is on or the URL's host
    is allow-listed; otherwise 401, and nothing is fetched. Other than http(s) URLs are refused
    later, to everyone, as ``invalid_source``."""
    settings = state.settings
    if not is_http_url(url) or settings.anonymous_image_urls:
        return
    if FetchPolicy.from_settings(settings).url_allowed(url):
        return
    scheme, _, token = headers.get("authorization", "").partition(" ")
    key = headers.get("x-api-key") or (token.strip() if scheme.lower() == "bearer" else "")
    if key and state.merchant_services.keys.lookup(key) is not None:
        return
    raise HTTPException(
        status.HTTP_401_UNAUTHORIZED,
        {
            "reason": "api_key_required",
            "message": "image_url needs a valid API key; send the image itself as a file or "
            "as image_base64",
        },
        headers={"WWW-Authenticate": "Bearer"},
    )
