"""Fixtures of the network tests."""

from __future__ import annotations

import pytest

import models  # noqa: F401  registers networks
from models.registry import list_models


@pytest.fixture(params=list_models())
def model_name(request: pytest.FixtureRequest) -> str:
    return request.param
