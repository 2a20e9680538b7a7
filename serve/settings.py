"""Settings of the HTTP endpoint (environment variables prefixed ``FLEET_API_``)."""

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServeSettings(BaseSettings):
    """Settings of the HTTP endpoint; environment variables are prefixed ``FLEET_API_``."""

    model_config = SettingsConfigDict(
        env_prefix="FLEET_API_", extra="forbid", populate_by_name=True
    )

    token: SecretStr | None = Field(None, description="API clients' token (FLEET_API_TOKEN).")
    token_file: str | None = Field(None, description="File whose first line is the token.")
    admin_token: SecretStr | None = Field(
        None,
        validation_alias="FLEET_ADMIN_TOKEN",
        description="The operator's token (FLEET_ADMIN_TOKEN): it may also edit agents and "
        "environments and send full specs. None: nobody is operator over HTTP.",
    )
    admin_token_file: str | None = Field(
        None,
        validation_alias="FLEET_ADMIN_TOKEN_FILE",
        description="File whose first line is the admin token.",
    )
    cors_origins: list[str] = Field(default_factory=list, description="Empty: CORS off.")
    max_body_bytes: int = Field(8 * 1024 * 1024, ge=1024, description="Larger bodies get 413.")
    max_page: int = Field(1000, ge=1, description="Largest `limit` a list route accepts.")
    max_batch: int = Field(10_000, ge=1, description="Most tasks in one POST /v1/tasks.")
    stream_poll_s: float = Field(
        15.0, gt=0, description="Long-poll wait of SSE streams (a keep-alive after each idle one)."
    )
    allow_repo: bool = Field(
        False,
        description="Accept tasks naming a server-side `repo` path from the admin token "
        "(never from API clients; off: 422 for everyone).",
    )

    def resolve_token(self) -> str:
        token = _read_token(self.token, self.token_file)
        if token is None:
            raise ValueError("no API token: set FLEET_API_TOKEN or give a token file")
        return token

    def resolve_admin_token(self) -> str | None:
        """The operator's token, or None when none is configured."""
        admin = _read_token(self.admin_token, self.admin_token_file)
        if admin is not None and admin == self.resolve_token():
            raise ValueError("the admin token must differ from the API token")
        return admin


def _read_token(value: SecretStr | None, file: str | None) -> str | None:
    if value is not None and value.get_secret_value():
        return value.get_secret_value()
    if file:
        lines = Path(file).read_text().strip().splitlines()
        if lines and lines[0].strip():
            return lines[0].strip()
    return None
