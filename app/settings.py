"""Service settings: one `BaseSettings`, read from `REACTKD_*` variables or a `.env` file."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_MODEL_DIR = Path(__file__).parent / "demo_models"
# Secrets that may come from a file instead (`REACTKD_API_KEYS_FILE=/run/secrets/...`): a
# plain variable is visible to anyone who can `docker inspect` or `exec env` the container.
SECRET_SETTINGS = ("api_keys", "dicomweb_password", "dicomweb_token")
# Keys that must never guard a production service: the `.env.example` placeholder, and any
# key short enough to guess (24 characters of `secrets.token_urlsafe` are 144 bits).
PLACEHOLDER_KEYS = frozenset({"change-me-to-a-long-random-key", "changeme", "change-me", "secret"})
MIN_KEY_LENGTH = 24


class Settings(BaseSettings):
    """Everything an operator can tune. Unsafe values are refused outside development."""

    # An empty variable (docker compose passes `${VAR:-}` as "") means the default.
    model_config = SettingsConfigDict(
        env_prefix="REACTKD_", env_file=".env", extra="ignore", env_ignore_empty=True
    )

    environment: Literal["development", "production"] = "development"
    model_dir: Path = DEFAULT_MODEL_DIR
    # Which model serves a task when the folder holds several: {"hcc": "hcc_lesion_student"}.
    served_models: Annotated[dict[str, str], NoDecode] = Field(default_factory=dict)
    # Which segmenter localizes a task's studies: {"hcc": "hcc_segmenter"}; by default the
    # newest in the folder, {"hcc": "none"} for none (app.runtime.ServedModels.from_folder).
    served_segmenters: Annotated[dict[str, str], NoDecode] = Field(default_factory=dict)
    store_dir: Path = Path("var/store")
    api_keys: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # Files holding the secrets instead (docker compose `secrets:`, Kubernetes Secret volumes).
    api_keys_file: Path | None = None
    dicomweb_password_file: Path | None = None
    dicomweb_token_file: Path | None = None
    max_upload_bytes: int = Field(default=512 * 1024 * 1024, gt=0)
    max_files: int = Field(default=2000, gt=0)
    # Zip safety: uncompressed total and per-member ratio (zip bombs).
    max_uncompressed_bytes: int = Field(default=2 * 1024 * 1024 * 1024, gt=0)
    max_compression_ratio: float = Field(default=200.0, gt=1.0)
    max_concurrent_inferences: int = Field(default=2, gt=0)
    # Memory the requests at work may take together, in MiB; a prediction reserves its share
    # by its declared size before its body is read (app.admission). Unset: 70 % of the
    # container's or the machine's memory.
    memory_budget_mb: int | None = Field(default=None, gt=0)
    # Worker processes of `reactkd serve` (set by it): each admits against 1/N of the budget.
    workers: int = Field(default=1, gt=0)
    request_timeout_s: float = Field(default=120.0, gt=0)
    # Longest wait for the next piece of a request body (a stalled or lying client).
    body_idle_timeout_s: float = Field(default=30.0, gt=0)
    retention_days: float = Field(default=30.0, gt=0)
    retention_interval_s: float = Field(default=3600.0, gt=0)
    # When a study is not gradable (docs/api.md: *Not gradable*); chosen from the segmenter's
    # measurements in reports/segmenter/ (docs/segmenter.md).
    min_liver_ml: float = Field(default=500.0, ge=0)
    min_cut_liver_ml: float = Field(default=800.0, ge=0)
    min_lesion_ml: float = Field(default=0.5, ge=0)
    intra_op_threads: int = Field(default=1, ge=0)
    inter_op_threads: int = Field(default=1, ge=0)
    warmup: bool = True
    allow_cors: Annotated[list[str], NoDecode] = Field(default_factory=list)
    log_level: str = "INFO"
    # DICOMweb (PACS): where `study_uid` predictions fetch studies (QIDO-RS + WADO-RS), e.g.
    # http://orthanc:8042/dicom-web. Unset: predictions take uploaded files only.
    dicomweb_url: str | None = None
    # STOW-RS destination of the DICOM results (SR, Parametric Map, SEG, capture); often the
    # same as `dicomweb_url`. Unset: results are only downloadable, never pushed.
    dicomweb_stow_url: str | None = None
    # Push the results after every prediction made from DICOM (else on POST .../store).
    dicomweb_auto_store: bool = False
    # HTTP basic auth or a bearer token for both URLs (never both).
    dicomweb_username: str | None = None
    dicomweb_password: SecretStr | None = None
    dicomweb_token: SecretStr | None = None
    dicomweb_timeout_s: float = Field(default=30.0, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _read_secret_files(cls, data: Any) -> Any:
        """`REACTKD_X_FILE=/run/secrets/x` -> the file's text as `REACTKD_X` (one of the two)."""
        if not isinstance(data, dict):
            return data
        for name in SECRET_SETTINGS:
            path = data.get(f"{name}_file")
            if path is None or (isinstance(path, str) and not path.strip()):
                continue
            variable = f"REACTKD_{name.upper()}"
            if data.get(name) not in (None, "", []):
                raise ValueError(f"set {variable} or {variable}_FILE, not both")
            try:
                # Secret files usually end with a newline (`echo key > file`); it is no part of it.
                data = {**data, name: Path(path).read_text(encoding="utf-8").rstrip("\r\n")}
            except (OSError, UnicodeDecodeError) as exc:
                raise ValueError(
                    f"{variable}_FILE={str(path)!r} cannot be read ({type(exc).__name__}); "
                    "mount the secret there or unset the variable"
                ) from None
        return data

    @field_validator("api_keys", "allow_cors", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        """`REACTKD_API_KEYS=a,b` -> ["a", "b"] (a plain list is kept); a keys file may also
        hold one key per line."""
        if isinstance(value, str):
            return [item.strip() for item in re.split(r"[,\n]", value) if item.strip()]
        return value

    @field_validator("served_models", "served_segmenters", mode="before")
    @classmethod
    def _json_object(cls, value: object) -> object:
        """`REACTKD_SERVED_MODELS='{"hcc": "NAME"}'`; empty (compose's unset variable) is {}."""
        if isinstance(value, str):
            return json.loads(value) if value.strip() else {}
        return value

    @field_validator(
        "dicomweb_url",
        "dicomweb_stow_url",
        "dicomweb_username",
        "dicomweb_password",
        "dicomweb_token",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        """`REACTKD_DICOMWEB_URL=` (as docker compose passes an unset variable) means unset."""
        return None if isinstance(value, str) and not value.strip() else value

    @model_validator(mode="after")
    def _refuse_unsafe_production(self) -> Settings:
        if self.environment == "production":
            if not self.api_keys:
                raise ValueError(
                    "REACTKD_API_KEYS must be set in production (comma separated keys); "
                    "an open service beside a PACS would expose patient studies"
                )
            self._refuse_weak_keys()
            if "*" in self.allow_cors:
                raise ValueError("REACTKD_ALLOW_CORS='*' is refused in production; list the origins")
        self._check_dicomweb()
        return self

    def _refuse_weak_keys(self) -> None:
        """The key itself is never in the message: it may be a real one, merely short."""
        for number, key in enumerate(self.api_keys, start=1):
            if key.lower() in PLACEHOLDER_KEYS or len(key) < MIN_KEY_LENGTH:
                what = "is a placeholder" if key.lower() in PLACEHOLDER_KEYS else "is too short"
                raise ValueError(
                    f"REACTKD_API_KEYS: key {number} of {len(self.api_keys)} {what}; production "
                    f"needs random keys of at least {MIN_KEY_LENGTH} characters, e.g. from "
                    "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`"
                )

    def _check_dicomweb(self) -> None:
        for name in ("dicomweb_url", "dicomweb_stow_url"):
            url = getattr(self, name)
            if url is not None and not url.startswith(("http://", "https://")):
                raise ValueError(f"REACTKD_{name.upper()} must be an http(s) URL, got {url!r}")
        if self.dicomweb_token is not None and self.dicomweb_username is not None:
            raise ValueError("set REACTKD_DICOMWEB_TOKEN or REACTKD_DICOMWEB_USERNAME/PASSWORD, not both")
        if (self.dicomweb_username is None) != (self.dicomweb_password is None):
            raise ValueError("REACTKD_DICOMWEB_USERNAME and REACTKD_DICOMWEB_PASSWORD go together")
        if self.dicomweb_auto_store and self.dicomweb_stow_url is None:
            raise ValueError("REACTKD_DICOMWEB_AUTO_STORE needs REACTKD_DICOMWEB_STOW_URL (the destination)")
