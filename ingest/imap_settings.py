"""Settings of the IMAP connector (section ``imap``): any number of mailboxes."""

from __future__ import annotations

import subprocess
from datetime import date
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from frontdesk.errors import SourceAuthError
from frontdesk.settings import ComponentSettings

TOKEN_COMMAND_TIMEOUT_S = 30.0  # the longest a token command may take


class MailboxSettings(BaseModel):
    """One IMAP account and the folders to import from it."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(pattern=r"^[A-Za-z0-9._-]+$", description="Connector name: messages come from 'imap:<name>'")
    host: str
    port: int = 993
    security: Literal["ssl", "starttls", "none"] = "ssl"
    ca_file: Path | None = Field(None, description="PEM file of the CAs to trust instead of the system's (a private "
                                                   "CA); certificates are always verified")
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
        """The current XOAUTH2 access token, read fresh on every login (tokens expire; a helper
        command or a sidecar refreshes them); None when the mailbox logs in with a password.
        Blocking (the command may take up to 30 s). Raises SourceAuthError naming the cause when
        the file cannot be read, the command fails or times out, or the token is empty."""
        if not (self.oauth2_token_file or self.oauth2_token_command):
            return None
        source = f"file {self.oauth2_token_file}" if self.oauth2_token_file else "command"
        try:
            if self.oauth2_token_file:
                token = self.oauth2_token_file.read_text().strip()
            else:
                out = subprocess.run(self.oauth2_token_command or "", shell=True, capture_output=True, text=True,
                                     timeout=TOKEN_COMMAND_TIMEOUT_S, check=False)
                if out.returncode != 0:
                    detail = out.stderr.strip().splitlines()[-1:] or [""]
                    raise SourceAuthError(f"mailbox {self.name}: the OAuth2 token command exited with "
                                          f"{out.returncode}: {detail[0][:200]}")
                token = out.stdout.strip()
        except subprocess.TimeoutExpired:  # its message quotes the command line, which may hold a secret
            raise SourceAuthError(f"mailbox {self.name}: the OAuth2 token command did not finish within "
                                  f"{TOKEN_COMMAND_TIMEOUT_S:g} s") from None
        except (OSError, subprocess.SubprocessError, UnicodeDecodeError) as exc:
            raise SourceAuthError(f"mailbox {self.name}: cannot get the OAuth2 token from the {source}: {exc}") from exc
        if not token:
            raise SourceAuthError(f"mailbox {self.name}: the OAuth2 token {source} gave an empty token")
        return token


class ImapSettings(ComponentSettings):
    section: ClassVar[str] = "imap"
    mailboxes: tuple[MailboxSettings, ...] = ()
    checkpoint_dir: Path | None = Field(None, description="Default <data_dir>/imap")
    max_message_bytes: int = Field(25 * 1024 * 1024, ge=1024)
    max_attachment_bytes: int = Field(15 * 1024 * 1024, ge=0, description="Larger attachments: metadata only")
    parse_cpu_limit_s: float = Field(10.0, gt=0, description="CPU seconds one mail may take to parse, else it is "
                                     "dead-lettered; a parser process stuck where the limit cannot stop it is killed "
                                     "after 3.1 times this plus 1 s (wall clock, that mail alone). Needs the parser processes")
    reconnect_initial_s: float = Field(1.0, gt=0)
    reconnect_max_s: float = Field(300.0, gt=0)
