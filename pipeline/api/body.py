"""The one request-body parser of the API: JSON, multipart/form-data or a URL-encoded form,
bounded while it streams in.

- The size limit is enforced on the bytes as they arrive, not only on ``Content-Length``: a
  chunked body without one is cut off at the limit just the same, and the answer (413) closes
  the connection, so nothing past the limit is read.
- Nothing reaches disk: file parts are held in memory (they are at most the limit), where
  Starlette's own form reader would spool anything over 1 MB to a temporary file.
- JSON is strict and bounded: no NaN/Infinity, no number that does not fit a double or an
  int64, no unpaired surrogate, at most ``MAX_DEPTH`` levels. Such input is a 422 whose message
  never repeats it.
"""

from __future__ import annotations

import json
import math
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from starlette.datastructures import FormData, UploadFile
from starlette.formparsers import FormParser, MultiPartException, MultiPartParser

from pipeline.api.errors import Problem

MAX_DEPTH = 32  # JSON nesting levels (search_after values are the deepest legitimate ones)
MAX_INT_DIGITS = 19  # an int64, which is what Elasticsearch's long holds
MAX_FIELDS = 50  # text fields of a form
MAX_FIELD_BYTES = 1024 * 1024  # one text field of a form (product metadata as JSON)
JSON_TYPES = ("application/json", "")  # no content type at all is read as JSON
FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")


@dataclass(frozen=True)
class Body:
    """A parsed request body: ``json`` for a JSON body (``is_json``), else the form's
    ``fields`` (text) and ``files`` (file parts' bytes by field name, in order)."""

    is_json: bool
    json: Any = None
    fields: dict[str, str] = field(default_factory=dict)
    files: dict[str, list[bytes]] = field(default_factory=dict)


class _JsonRefused(ValueError):
    """JSON that is well-formed but not accepted (the message names the rule, not the input)."""


def invalid(loc: list[Any], msg: str, kind: str = "value_error") -> RequestValidationError:
    """One request validation error (422, FastAPI's format), for checks outside a model."""
    return RequestValidationError([{"loc": loc, "msg": msg, "type": kind}])


def _refuse_constant(name: str) -> Any:
    raise _JsonRefused("NaN and Infinity are not valid JSON numbers")


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise _JsonRefused(f"an integer has more than {MAX_INT_DIGITS} digits")
    return int(text)


def _check_tree(value: Any) -> None:
    """Depth, strings and numbers of a decoded JSON value, without recursion. Floats are checked
    here rather than by a ``parse_float`` hook: a 512-float vector parses in a quarter of the
    time (a number too large for a double decodes to infinity)."""
    stack: list[tuple[Any, int]] = [([value], 0)]
    while stack:
        node, depth = stack.pop()
        for item in [*node.keys(), *node.values()] if isinstance(node, dict) else node:
            kind = type(item)
            if kind is float:
                if not math.isfinite(item):
                    raise _JsonRefused("a number is out of the range of a double")
            elif kind is str:
                if not item.isascii():
                    try:
                        item.encode("utf-8")
                    except UnicodeEncodeError as exc:
                        raise _JsonRefused("a string holds an unpaired surrogate") from exc
            elif kind is dict or kind is list:
                if depth + 1 > MAX_DEPTH:
                    raise _JsonRefused(f"JSON is nested deeper than {MAX_DEPTH} levels")
                stack.append((item, depth + 1))


def parse_json(raw: bytes | str, loc: list[Any]) -> Any:
    """Decode strict, bounded JSON; 422 (``json_invalid``) at ``loc`` otherwise."""
    try:
        value = json.loads(raw, parse_constant=_refuse_constant, parse_int=_bounded_int)
        _check_tree(value)
    except RecursionError:
        message = f"not valid JSON: nested deeper than {MAX_DEPTH} levels"
    except _JsonRefused as exc:
        message = f"not valid JSON: {exc}"
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        # their messages give a position and at most one byte, never the input
        message = f"not valid JSON: {exc}"
    else:
        return value
    raise invalid(loc, message, "json_invalid")


def too_large(limit: int, what: str = "request body") -> Problem:
    """413 that also closes the connection, so the rest of an oversized body is never read."""
    return Problem(
        "body_too_large",
        f"the {what} is over the limit of {limit:,} bytes",
        headers={"Connection": "close"},
    )


async def limited_stream(request: Request, limit: int) -> AsyncGenerator[bytes, None]:
    """The body's chunks as they arrive; 413 as soon as the declared length or the bytes
    received so far exceed ``limit``."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise Problem("invalid_content_length", "Content-Length is not a number")
        if int(declared) > limit:
            raise too_large(limit)
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > limit:
            raise too_large(limit)
        yield chunk


async def _read_form(request: Request, limit: int, max_files: int) -> FormData:
    content_type = request.headers.get("content-type", "")
    stream = limited_stream(request, limit)
    parser: MultiPartParser | FormParser
    if content_type.lower().startswith("multipart/"):
        parser = MultiPartParser(
            request.headers,
            stream,
            max_files=max_files,
            max_fields=MAX_FIELDS,
            max_part_size=MAX_FIELD_BYTES,
        )
        parser.spool_max_size = limit + 1  # file parts stay in memory (never over the limit)
    else:
        parser = FormParser(
            request.headers, stream, max_fields=MAX_FIELDS, max_part_size=MAX_FIELD_BYTES
        )
    try:
        return await parser.parse()
    except MultiPartException as exc:
        raise invalid(["body"], f"not a valid form: {exc.message}", "form_invalid") from exc


async def read_body(
    request: Request, *, max_bytes: int, max_json_bytes: int | None = None, max_files: int = 1
) -> Body:
    """Parse the body of ``request`` (JSON or a form), refusing it once it grows over
    ``max_bytes`` (``max_json_bytes`` for JSON, when smaller) or holds over ``max_files`` files."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type in JSON_TYPES:
        limit = min(max_bytes, max_json_bytes or max_bytes)
        raw = bytearray()
        async for chunk in limited_stream(request, limit):
            raw += chunk
        return Body(is_json=True, json=parse_json(bytes(raw) or b"{}", ["body"]))
    if content_type not in FORM_TYPES:
        raise Problem(
            "unsupported_media_type",
            "send application/json or multipart/form-data",
        )
    form = await _read_form(request, max_bytes, max_files)
    fields: dict[str, str] = {}
    files: dict[str, list[bytes]] = {}
    for name, value in form.multi_items():
        if isinstance(value, UploadFile):
            files.setdefault(name, []).append(await value.read())
            await value.close()
        else:
            fields[name] = value
    return Body(is_json=False, fields=fields, files=files)
