"""Settings of the IMAP connector (section ``imap``): any number of mailboxes."""

from __future__ import annotations

import subprocess
from datetime import date
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from frontdesk.errors import SourceAuthError
from frontdesk.settings import ComponentSettings


class MailboxSettings(BaseModel):
    """One IMAP account and the folders to import from it."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(pattern=r"^[A-Za-z0-9._-]+$", description="Connector name: messages come from 'imap:<name>'")
    host: str
    port: int = 993
    security: Literal["ssl", "starttls", "none"] = "ssl"
    username: str
    password: SecretStr | None = None
    oauth2_token_command: str | None = Field(None, description="Command printing an XOAUTH2 access token")
    oauth2_token_file: Path | None = Field(None, description="File holding an XOAUTH2 access token")
    folders: tuple[str, ...] = ("INBOX",)
    channel: Literal["email", "social"] = "email"
    after_import: Literal["seen", "move", "delete"] = "seen"
    move_to: str | None = None
    backfill_since: date | None = Field(None, description="First start: also import seen mail since this date")
    idle: bool = Field(True, description="Use IMAP IDLE when the server offers it (else poll)")
    poll_interval_s: float = Field(30.0, gt=0)
    idle_renew_s: float = Field(25 * 60, gt=0, le=29 * 60, description="Re-issue IDLE before the 29-minute limit")
    batch: int = Field(200, ge=1, le=2000)
    timeout_s: float = Field(60.0, gt=0)

    @model_validator(mode="after")
    def _check(self) -> MailboxSettings:
        if self.after_import == "move" and not self.move_to:
            raise ValueError("after_import 'move' needs move_to")
        if not (self.password or self.oauth2_token_command or self.oauth2_token_file):
            raise ValueError("give password, oauth2_token_command or oauth2_token_file")
        return self

    def oauth2_token(self) -> str | None:
        """The current XOAUTH2 token (read fresh on every login: tokens expire)."""
        try:
            if self.oauth2_token_file:
                return self.oauth2_token_file.read_text().strip()
            if self.oauth2_token_command:
                out = subprocess.run(self.oauth2_token_command, shell=True, capture_output=True, text=True,
                                     timeout=30, check=True)
                return out.stdout.strip()
        except (OSError, subprocess.SubprocessError) as exc:
            raise SourceAuthError(f"mailbox {self.name}: cannot get the OAuth2 token: {exc}") from exc
        return None


class ImapSettings(ComponentSettings):
    section: ClassVar[str] = "imap"
    mailboxes: tuple[MailboxSettings, ...] = ()
    checkpoint_dir: Path | None = Field(None, description="Default <data_dir>/imap")
    max_message_bytes: int = Field(25 * 1024 * 1024, ge=1024)
    max_attachment_bytes: int = Field(15 * 1024 * 1024, ge=0, description="Larger attachments: metadata only")
    reconnect_initial_s: float = Field(1.0, gt=0)
    reconnect_max_s: float = Field(300.0, gt=0)
