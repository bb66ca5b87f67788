"""The container files: docker-compose.yml, Dockerfile and .env.example agree with the settings."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from app.settings import Settings

ROOT = Path(__file__).parent.parent


def _compose() -> dict[str, Any]:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert isinstance(compose, dict)
    return compose


def test_every_setting_reaches_the_service() -> None:
    """A setting compose leaves out can be written in .env and silently never apply."""
    environment = _compose()["services"]["reactkd"]["environment"]
    for field in Settings.model_fields:
        variable = f"REACTKD_{field.upper()}"
        assert variable in environment, f"{variable} is not forwarded by docker-compose.yml"
        value = str(environment[variable])
        # Fixed by the image's layout (the store and models folders), or taken from .env.
        assert value.startswith("/") or value.startswith(f"${{{variable}:-"), (variable, value)


def test_compose_variables_are_in_env_example() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    example = (ROOT / ".env.example").read_text()
    used = set(re.findall(r"\$\{(ORTHANC_\w+)", text))
    assert "ORTHANC_VERSION" in used
    missing = [name for name in sorted(used) if not re.search(rf"^#? ?{name}=", example, re.M)]
    assert not missing, f"not in .env.example: {missing}"


def test_health_means_ready_and_waits_for_orthanc() -> None:
    services = _compose()["services"]
    assert "/readyz" in " ".join(services["reactkd"]["healthcheck"]["test"])
    for name in ("orthanc", "orthanc-demo"):
        assert services[name]["healthcheck"]["test"], name
        dependency = services["reactkd"]["depends_on"][name]
        # Optional: `docker compose up` without the profile has no Orthanc to wait for.
        assert dependency == {"condition": "service_healthy", "required": False}
    dockerfile = (ROOT / "Dockerfile").read_text()
    [healthcheck] = re.findall(r"^HEALTHCHECK .*\n.*", dockerfile, re.M)
    assert "/readyz" in healthcheck and "/healthz" not in healthcheck


def test_image_user_is_numeric() -> None:
    """Kubernetes' runAsNonRoot can only check a numeric user."""
    users = re.findall(r"^USER (.+)$", (ROOT / "Dockerfile").read_text(), re.M)
    assert users == ["10001:10001"]
