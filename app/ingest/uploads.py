"""Reading a multipart upload within limits: bytes (while streaming) and file count."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from contextlib import aclosing

from fastapi import Request
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import (
    BodyTimeoutError,
    MissingFieldError,
    TooLargeError,
    TooManyFilesError,
    UnsupportedMediaError,
)
from app.ingest.study import Upload

# Every uploaded file is read into memory whole anyway (`Upload.data`). Starlette spools a
# file part over 1 MiB to a temporary file on disk, each 64 KiB chunk written through the
# thread pool, then read back: ~7 ms of a 4 MiB CT. Parts up to this size stay in memory;
# bigger ones still go to disk while streaming, so memory per request stays bounded.
_IN_MEMORY_PART_BYTES = 64 * 1024 * 1024


class _MultiPartParser(MultiPartParser):
    spool_max_size = _IN_MEMORY_PART_BYTES


class BodyLimitMiddleware:
    """Refuse request bodies over `limit` bytes (by Content-Length up front, else while
    streaming), and bodies that stall: each piece must arrive within `idle_s` seconds, so a
    client announcing more than it sends cannot hold a worker and its memory forever."""

    def __init__(self, app: ASGIApp, limit: int, idle_s: float) -> None:
        self.app = app
        self.limit = limit
        self.idle_s = idle_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        received = 0
        body_done = False

        async def limited_receive() -> Message:
            nonlocal received, body_done
            if body_done:  # later receives wait for a disconnect, for as long as the response takes
                return await receive()
            try:  # a deadline, not a task per chunk (`wait_for` would start one)
                async with asyncio.timeout(self.idle_s):
                    message = await receive()
            except TimeoutError:
                raise BodyTimeoutError(
                    f"no part of the request body arrived for {self.idle_s:g} s after {received} "
                    "bytes; send the whole body (its Content-Length must match it)",
                    field="body",
                ) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise TooLargeError(f"the upload exceeds {self.limit} bytes", field="body")
                body_done = not message.get("more_body", False)
            else:
                body_done = True  # http.disconnect
            return message

        await self.app(scope, limited_receive, send)


async def read_uploads(
    request: Request, max_files: int, max_bytes: int
) -> tuple[dict[str, list[Upload]], dict[str, str]]:
    """Files by field name, and the plain form fields."""
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        raise UnsupportedMediaError(
            f"send multipart/form-data with one field per modality, got {content_type!r}",
            field="body",
        )
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > max_bytes:
        raise TooLargeError(f"the upload of {length} bytes exceeds {max_bytes} bytes", field="body")
    try:
        async with aclosing(request.stream()) as stream:
            parser = _MultiPartParser(request.headers, stream, max_files=max_files, max_fields=100)
            form = await parser.parse()
    except MultiPartException as exc:
        if "Too many files" in exc.message:
            raise TooManyFilesError(f"more than {max_files} files were sent", field="body") from None
        raise UnsupportedMediaError(
            f"the multipart body cannot be parsed ({exc.message})", field="body"
        ) from None
    files: dict[str, list[Upload]] = defaultdict(list)
    fields: dict[str, str] = {}
    for name, value in form.multi_items():
        if isinstance(value, UploadFile):
            data = await value.read()
            files[name].append(Upload(name, value.filename or name, value.content_type or "", data))
        else:
            fields[name] = str(value)
    await form.close()
    return dict(files), fields


def task_name(fields: dict[str, str], request: Request) -> str:
    task = fields.get("task") or request.query_params.get("task")
    if not task:
        raise MissingFieldError("the `task` field is required (form field or query parameter)", field="task")
    return task
