"""Fixtures of the PACS integration suite: a real Orthanc, a tiny ONNX student, the service.

The session starts its own Orthanc (installing the Debian packages first when missing and
this runs as root with apt-get); when Orthanc can be neither found nor installed the suite
is skipped with the reason, except under CI (`CI` set), where that is a failure.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from app.main import create_app
from bench.orthanc import OrthancServer, OrthancUnavailable, ensure_installed
from tests.common import make_settings, random_checkpoint


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration/" in str(item.path).replace(os.sep, "/"):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancServer]:
    try:
        binary, plugin = ensure_installed()
    except OrthancUnavailable as exc:
        if os.environ.get("CI"):
            pytest.fail(f"the PACS integration suite must run in CI: {exc}")
        pytest.skip(f"no Orthanc: {exc}")
    server = OrthancServer(binary, plugin, folder=tmp_path_factory.mktemp("orthanc"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny HCC student (width 4, seeded random weights) exported as the service expects."""
    from training.export import export_model

    folder = tmp_path_factory.mktemp("models")
    torch.set_num_threads(1)
    checkpoint = random_checkpoint("hcc_student", "hcc")
    out = folder / "hcc_test.onnx"
    card = export_model(
        checkpoint, out, training_data={"synthetic": True, "description": "random weights for tests"}
    )
    out.with_suffix(".json").write_text(json.dumps(card))
    return folder


@pytest.fixture(scope="module")
def client(
    orthanc: OrthancServer, model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TestClient]:
    """The service reading studies from Orthanc and storing results to it (on request)."""
    settings = make_settings(
        model_dir,
        tmp_path_factory.mktemp("store"),
        dicomweb_url=orthanc.dicomweb_url,
        dicomweb_stow_url=orthanc.dicomweb_url,
        dicomweb_timeout_s=20.0,
    )
    with TestClient(create_app(settings)) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def auto_client(
    orthanc: OrthancServer, model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TestClient]:
    """The service storing every result to Orthanc as soon as it predicts."""
    settings = make_settings(
        model_dir,
        tmp_path_factory.mktemp("auto-store"),
        dicomweb_url=orthanc.dicomweb_url,
        dicomweb_stow_url=orthanc.dicomweb_url,
        dicomweb_auto_store=True,
    )
    with TestClient(create_app(settings)) as test_client:
        yield test_client
