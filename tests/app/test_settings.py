"""Settings refused or read at start-up: weak production keys and `*_FILE` secrets."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from app.settings import SECRET_SETTINGS, Settings

STRONG = "k" * 32


def _settings(**values: object) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[call-arg, arg-type]


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ("change-me-to-a-long-random-key", "key 1 of 1 is a placeholder"),
        (f"{STRONG},abc123", "key 2 of 2 is too short"),
        ("CHANGE-ME-TO-A-LONG-RANDOM-KEY", "key 1 of 1 is a placeholder"),
    ],
)
def test_production_refuses_weak_keys(keys: str, message: str) -> None:
    with pytest.raises(ValidationError, match=f"REACTKD_API_KEYS: {message}") as info:
        _settings(environment="production", api_keys=keys)
    [error] = info.value.errors()
    assert not any(key in error["msg"] for key in keys.split(","))  # the key itself stays out


def test_production_accepts_long_keys_and_development_any() -> None:
    assert _settings(environment="production", api_keys=STRONG).api_keys == [STRONG]
    assert _settings(api_keys="change-me-to-a-long-random-key").api_keys  # development


def test_secret_read_from_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    keys = tmp_path / "keys"
    keys.write_text(f"{STRONG}\n{'j' * 30}\n")  # one key per line, trailing newline
    password = tmp_path / "password"
    password.write_text("s3cret with spaces \n")
    monkeypatch.setenv("REACTKD_API_KEYS_FILE", str(keys))
    monkeypatch.setenv("REACTKD_DICOMWEB_PASSWORD_FILE", str(password))
    settings = _settings(environment="production", dicomweb_username="reactkd")
    assert settings.api_keys == [STRONG, "j" * 30]
    assert settings.dicomweb_password is not None
    assert settings.dicomweb_password.get_secret_value() == "s3cret with spaces "


@pytest.mark.parametrize("name", SECRET_SETTINGS)
def test_secret_file_errors_name_the_variable(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    variable = f"REACTKD_{name.upper()}"
    monkeypatch.setenv(f"{variable}_FILE", str(tmp_path / "missing"))
    with pytest.raises(ValidationError, match=f"{variable}_FILE=.*missing.* cannot be read"):
        _settings()
    secret = tmp_path / "secret"
    secret.write_text("x" * 30)
    monkeypatch.setenv(f"{variable}_FILE", str(secret))
    monkeypatch.setenv(variable, "y" * 30)
    with pytest.raises(ValidationError, match=f"set {variable} or {variable}_FILE, not both"):
        _settings()


def test_env_example_is_refused_until_filled_in() -> None:
    """`.env.example` copied to `.env` as it is must not start a production service."""
    example = Path(__file__).parent.parent.parent / ".env.example"
    with pytest.raises(ValidationError, match="REACTKD_API_KEYS: key 1 of 1 is a placeholder"):
        Settings(_env_file=example)  # type: ignore[call-arg]
