"""Auth evidence: with API keys configured, every route but the probes answers 401 without one."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from app.main import create_app

from .evidence_helpers import DEMO_MODELS, assert_problem, make_settings

KEY = "evidence-key-0123456789"
OPEN_PATHS = {"/healthz", "/readyz"}
DOC_PATHS = ("/openapi.json", "/docs", "/redoc")
"""Not operations of the schema (so `_routes` does not list them), but they describe the API."""


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    settings = make_settings(DEMO_MODELS, tmp_path_factory.mktemp("store"), api_keys=[KEY])
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def _routes(client: TestClient) -> list[tuple[str, str]]:
    """(method, path with every {parameter} filled by a dummy id) for each route of the app.

    This FastAPI nests included routers (`_IncludedRouter`) inside `app.routes`, so the flat
    list of operations comes from the OpenAPI schema, which the app builds from every route.
    """
    out = []
    for template, operations in client.app.openapi()["paths"].items():  # type: ignore[attr-defined]
        if template in OPEN_PATHS:
            continue
        path = re.sub(r"\{[^}]+\}", "0123456789abcdef", template)
        out.extend((method.upper(), path) for method in operations if method != "head")
    return out


def test_every_route_but_the_probes_needs_a_key(client: TestClient) -> None:
    routes = _routes(client)
    assert len(routes) >= 5
    refused = []
    for method, path in routes:
        response = client.request(method, path)
        assert_problem(response, 401, "unauthorized")
        refused.append(f"{method} {path}")
    print(f"\n{len(refused)} routes answered 401 without a key:", refused)


@pytest.mark.parametrize("path", DOC_PATHS)
def test_the_api_documentation_needs_a_key(client: TestClient, path: str) -> None:
    response = client.get(path)
    assert_problem(response, 401, "unauthorized")
    assert client.get(path, headers={"X-API-Key": "wrong"}).status_code == 401
    opened = client.get(path, headers={"X-API-Key": KEY})
    assert opened.status_code == 200, (path, opened.status_code)
    if path == "/openapi.json":
        assert "/v1/predict" in opened.json()["paths"]
    else:
        assert "/openapi.json" in opened.text  # the page loads the schema from the guarded route


def test_without_keys_the_documentation_is_open(tmp_path_factory: pytest.TempPathFactory) -> None:
    settings = make_settings(DEMO_MODELS, tmp_path_factory.mktemp("open-store"))
    with TestClient(create_app(settings)) as open_client:
        for path in DOC_PATHS:
            assert open_client.get(path).status_code == 200, path
        assert "/v1/predict" in open_client.get("/openapi.json").json()["paths"]


def test_probes_are_open(client: TestClient) -> None:
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code in (200, 503)


@pytest.mark.parametrize(
    "headers", [{"X-API-Key": KEY}, {"Authorization": f"Bearer {KEY}"}], ids=["x-api-key", "bearer"]
)
def test_a_key_opens_a_get_route(client: TestClient, headers: dict[str, str]) -> None:
    assert client.get("/v1/models", headers=headers).status_code == 200
    assert client.get("/v1/models", headers={"X-API-Key": "wrong"}).status_code == 401
