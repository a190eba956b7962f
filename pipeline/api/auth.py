"""Merchant authentication (API keys) and the upload rate limit, as FastAPI dependencies.

A key is sent as ``X-API-Key: <key>`` or ``Authorization: Bearer <key>``. Its merchant is who
the request acts for: product ids in URLs and bodies are always that merchant's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request, Response, status
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from redis import Redis

from pipeline.api.app import ApiState, api_state
from pipeline.apikeys import ApiKey, ApiKeyStore
from pipeline.ratelimit import RateLimiter, RedisCounter
from pipeline.storage import ImageStore

_api_key_header = APIKeyHeader(
    name="X-API-Key", auto_error=False, description="Merchant API key (`vitrine keys create`)."
)
_bearer = HTTPBearer(auto_error=False, description="The same API key as a bearer token.")


@dataclass
class MerchantServices:
    """What the merchant routes share: Redis-backed keys and limits, the image store."""

    keys: ApiKeyStore
    limiter: RateLimiter
    store: ImageStore

    @classmethod
    def from_state(cls, state: ApiState) -> MerchantServices:
        settings = state.settings
        redis = Redis.from_url(settings.redis_url, socket_timeout=5)
        return cls(
            keys=ApiKeyStore(redis, settings.redis_prefix),
            limiter=RateLimiter(
                RedisCounter(redis),
                limit=settings.upload_rate_limit,
                window_s=settings.upload_rate_window_s,
                prefix=settings.redis_prefix,
            ),
            store=ImageStore(settings.images_dir),
        )


def merchant_services(request: Request) -> MerchantServices:
    """Created on first use and kept on the app (creating two by a race is harmless)."""
    services = getattr(request.app.state, "merchant_services", None)
    if services is None:
        services = MerchantServices.from_state(request.app.state.vitrine)
        request.app.state.merchant_services = services
    return services


def current_key(
    services: Annotated[MerchantServices, Depends(merchant_services)],
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
    services: Annotated[MerchantServices, Depends(merchant_services)],
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
State = Annotated[ApiState, Depends(api_state)]
Services = Annotated[MerchantServices, Depends(merchant_services)]
