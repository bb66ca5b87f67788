"""Logs are JSON only, one line per request, and a refused start-up is one line that says
what to do (issue #40, points 7 and 10)."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from app_helpers import make_settings

from app.logs import JsonFormatter
from app.main import STARTUP_FAILURE, create_app

LOGGERS = ("", "app", "uvicorn", "uvicorn.error", "uvicorn.access")


@pytest.fixture
def fresh_logging() -> Iterator[None]:
    """No JSON handler left from earlier tests (bound to an old stderr); restored after."""
    saved = {
        name: (logging.getLogger(name).handlers[:], logging.getLogger(name).propagate) for name in LOGGERS
    }
    for name in LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers = [h for h in logger.handlers if not isinstance(h.formatter, JsonFormatter)]
    yield
    for name, (handlers, propagate) in saved.items():
        logging.getLogger(name).handlers = handlers
        logging.getLogger(name).propagate = propagate


def _records(text: str) -> list[dict]:
    """Every line of `text` as JSON (fails on a plain-text line)."""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _serve(
    store: Path, models: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[uvicorn.Server, threading.Thread, str]:
    """The service under uvicorn, as `reactkd serve` starts it, on a free loopback port."""
    monkeypatch.chdir(store.parent)  # no `.env` read
    monkeypatch.setenv("REACTKD_STORE_DIR", str(store))
    monkeypatch.setenv("REACTKD_MODEL_DIR", str(models))
    config = uvicorn.Config("app.main:create_app", factory=True, host="127.0.0.1", port=0, log_level="info")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    return server, thread, f"http://127.0.0.1:{port}"


@pytest.mark.usefixtures("fresh_logging")
def test_uvicorn_logs_json_and_one_line_per_request(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "models").mkdir()
    server, thread, url = _serve(tmp_path / "store", tmp_path / "models", monkeypatch)
    try:
        assert httpx.get(f"{url}/healthz", headers={"X-Request-ID": "probe-7"}).status_code == 200
        logging.getLogger("dicomweb_client.web").warning("a library's warning")
    finally:
        server.should_exit = True
        thread.join(timeout=30)
    captured = capsys.readouterr()
    records = _records(captured.err + captured.out)  # uvicorn's access lines went to stdout
    loggers = {r["logger"] for r in records}
    assert {"uvicorn.error", "app.main", "dicomweb_client.web"} <= loggers, loggers
    requests = [r for r in records if r.get("request_id") == "probe-7"]
    assert [(r["message"], r["route"], r["status"]) for r in requests] == [("request", "/healthz", 200)]
    assert "uvicorn.access" not in loggers


@pytest.mark.usefixtures("fresh_logging")
def test_unwritable_store_is_one_line_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A file where the folder should be: unwritable as a folder even for root, who passes
    # every permission check (a read-only folder is tried below when not root).
    blocked = tmp_path / "store"
    blocked.write_text("")
    candidates = [blocked]
    readonly = tmp_path / "readonly"
    readonly.mkdir(mode=0o500)
    if not os.access(readonly, os.W_OK):
        candidates.append(readonly)
    for store in candidates:
        with pytest.raises(SystemExit) as info:
            create_app(make_settings(tmp_path, store))
        assert info.value.code == STARTUP_FAILURE
        [record] = _records(capsys.readouterr().err)
        assert record["level"] == "CRITICAL"
        assert str(store) in record["message"] and "chown -R" in record["message"]
        assert ":U" in record["message"] and "REACTKD_STORE_DIR" in record["message"]


@pytest.mark.usefixtures("fresh_logging")
def test_refused_settings_are_one_line_without_the_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)  # no `.env` read
    monkeypatch.setenv("REACTKD_ENVIRONMENT", "production")
    monkeypatch.setenv("REACTKD_API_KEYS", "short-but-real-key")
    monkeypatch.setenv("REACTKD_MAX_FILES", "many")
    with pytest.raises(SystemExit) as info:
        create_app()
    assert info.value.code == STARTUP_FAILURE
    [record] = _records(capsys.readouterr().err)
    assert record["message"].startswith("start-up refused: REACTKD_MAX_FILES: ")
    monkeypatch.delenv("REACTKD_MAX_FILES")
    with pytest.raises(SystemExit):
        create_app()
    [record] = _records(capsys.readouterr().err)
    assert "REACTKD_API_KEYS: key 1 of 1 is too short" in record["message"]
    assert "short-but-real-key" not in record["message"]
