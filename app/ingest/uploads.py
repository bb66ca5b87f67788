"""Reading a multipart upload within limits (bytes while streaming, file count), spooled to disk."""

from __future__ import annotations

import asyncio
import re
from collections import defaultdict
from collections.abc import Callable, Mapping
from contextlib import aclosing
from pathlib import Path
from typing import BinaryIO

from fastapi import Request
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import (
    BodyTimeoutError,
    MissingFieldError,
    StorageError,
    TooLargeError,
    TooManyFilesError,
    UnsupportedMediaError,
)
from app.ingest.study import Upload

# Plain form fields (`task`, `study_uid`, `series_uids`) are short.
_MAX_FIELD_BYTES = 64 * 1024
_MAX_FIELDS = 100
# Spooled files are written through this much buffer: a few system calls per DICOM slice.
_WRITE_BUFFER = 1 << 20


def safe_name(name: str) -> str:
    """A file or folder name that cannot leave its folder or surprise a shell."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", name.rsplit("/", 1)[-1])[:100].lstrip(".") or "upload"


class _SpoolingParser:
    """multipart/form-data, each file part written to disk as its bytes arrive.

    Files land in `folder` as `<field>/<n>-<filename>` (n counts files over the whole
    request), the layout a prediction keeps them in (`app.store`), so keeping them is a
    rename. Writes go straight from the event loop: each is a copy into the page cache
    (~20 us per 64 KiB piece), where a hop through the thread pool per piece would cost more.
    """

    def __init__(self, folder: Path, max_files: int) -> None:
        self.folder = folder
        self.max_files = max_files
        self.files: dict[str, list[Upload]] = defaultdict(list)
        self.fields: dict[str, str] = {}
        self._header_name = b""
        self._header_value = b""
        self._headers: dict[bytes, bytes] = {}
        self._name = ""
        self._sink: BinaryIO | None = None
        self._field_data = bytearray()
        self._field_count = 0

    def callbacks(self) -> dict[str, Callable[..., None]]:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": lambda data, start, end: self._add(data[start:end], value=False),
            "on_header_value": lambda data, start, end: self._add(data[start:end], value=True),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
        }

    def close(self) -> None:
        if self._sink is not None:
            self._sink.close()
            self._sink = None

    def _add(self, data: bytes, *, value: bool) -> None:
        if value:
            self._header_value += data
        else:
            self._header_name += data

    def _part_begin(self) -> None:
        self._headers, self._field_data = {}, bytearray()

    def _header_end(self) -> None:
        self._headers[self._header_name.lower()] = self._header_value
        self._header_name, self._header_value = b"", b""

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        if b"name" not in options:
            raise UnsupportedMediaError(
                'a part of the multipart body lacks the "name" of its Content-Disposition', field="body"
            )
        self._name = options[b"name"].decode("utf-8", "replace")
        if b"filename" not in options:
            self._field_count += 1
            if self._field_count > _MAX_FIELDS:
                raise UnsupportedMediaError(f"more than {_MAX_FIELDS} form fields were sent", field="body")
            return
        count = sum(len(files) for files in self.files.values())
        if count >= self.max_files:
            raise TooManyFilesError(f"more than {self.max_files} files were sent", field="body")
        filename = options[b"filename"].decode("utf-8", "replace")
        path = self.folder / safe_name(self._name) / f"{count:05d}-{safe_name(filename)}"
        path.parent.mkdir(exist_ok=True)
        self._sink = path.open("wb", buffering=_WRITE_BUFFER)
        content_type = self._headers.get(b"content-type", b"").decode("latin-1")
        self.files[self._name].append(Upload(self._name, filename or self._name, content_type, path))

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._sink is not None:
            self._sink.write(data[start:end])
            return
        self._field_data += data[start:end]
        if len(self._field_data) > _MAX_FIELD_BYTES:
            raise UnsupportedMediaError(
                f"form field {self._name!r} is longer than {_MAX_FIELD_BYTES} bytes", field=self._name
            )

    def _part_end(self) -> None:
        if self._sink is not None:
            self.close()
        else:
            self.fields[self._name] = self._field_data.decode("utf-8", "replace")


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


def declared_length(headers: Mapping[str, str]) -> int:
    """The body's Content-Length; 0 when not declared (chunked) or not a number."""
    length = headers.get("content-length", "")
    return int(length) if length.isdigit() else 0


async def read_uploads(
    request: Request, folder: Path, max_files: int, max_bytes: int
) -> tuple[dict[str, list[Upload]], dict[str, str]]:
    """Files by field name (spooled into `folder`), and the plain form fields."""
    content_type, options = parse_options_header(request.headers.get("content-type", ""))
    if content_type != b"multipart/form-data":
        raise UnsupportedMediaError(
            f"send multipart/form-data with one field per modality, got {content_type.decode()!r}",
            field="body",
        )
    if b"boundary" not in options:
        raise UnsupportedMediaError("the multipart body names no boundary", field="body")
    length = declared_length(request.headers)
    if length > max_bytes:
        raise TooLargeError(f"the upload of {length} bytes exceeds {max_bytes} bytes", field="body")
    parts = _SpoolingParser(folder, max_files)
    try:
        parser = MultipartParser(options[b"boundary"], parts.callbacks())  # type: ignore[arg-type]
        async with aclosing(request.stream()) as stream:
            async for chunk in stream:
                parser.write(chunk)
        parser.finalize()
    except FormParserError as exc:
        raise UnsupportedMediaError(f"the multipart body cannot be parsed ({exc})", field="body") from None
    except OSError as exc:  # the spool's disk filled up, or went away, under the upload
        raise StorageError(
            f"the upload could not be spooled to the store's disk ({type(exc).__name__}); "
            "check the store folder's space and permissions"
        ) from None
    finally:
        parts.close()
    return dict(parts.files), parts.fields


def task_name(fields: dict[str, str], request: Request) -> str:
    task = fields.get("task") or request.query_params.get("task")
    if not task:
        raise MissingFieldError("the `task` field is required (form field or query parameter)", field="task")
    return task
