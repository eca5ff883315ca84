"""Settings of the dispatch stage (section ``dispatch``) and of the SMTP replier (section ``smtp``)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field, SecretStr, field_validator

from dispatch.ack import zone
from frontdesk.settings import ComponentSettings, database_url_problem

CONFIG_DIR = Path(__file__).resolve().parent.parent / "config"


class DispatchSettings(ComponentSettings):
    section: ClassVar[str] = "dispatch"
    database_url: str | None = Field(None, description="SQLAlchemy URL; default sqlite:///<data_dir>/cases.sqlite3")
    routing_file: Path = Field(CONFIG_DIR / "routing.yaml", description="Routing rules (first match wins)")
    templates_dir: Path = Field(CONFIG_DIR / "templates", description="Acknowledgement templates per language")
    fallback_language: str = "en"
    from_address: str = Field("support@frontdesk.example", description="From of email acknowledgements")
    from_name: str = "Support"
    message_id_domain: str = Field("frontdesk.example", description="Right-hand side of our Message-IDs")
    our_addresses: tuple[str, ...] = Field((), description="Our own mailboxes/domains ('@bet.az'): never "
                                         "acknowledged (from_address always counts as ours)")
    ack_channels: tuple[str, ...] = Field(("email", "chat", "social"), description="Channels that get an acknowledgement")
    public_mentions: Literal["none", "reply", "dm"] = Field(
        "none", description="Public social mentions and Telegram group messages: 'none' (no acknowledgement: keeps "
                            "case numbers out of public "
                            "threads), 'reply' (a short public reply under the mention from the public_ack "
                            "templates: no reference, no name), 'dm' (the full acknowledgement privately: a Meta "
                            "private reply, or to the author's id through the webhook)")
    ack_follow_ups: bool = Field(False, description="Acknowledge follow-ups too (default: one per case)")
    ack_rate_max: int = Field(3, ge=1, description="At most this many acknowledgements per sender ...")
    ack_rate_window_s: int = Field(600, ge=1, description="... per this many seconds")
    group: str = Field("frontdesk-dispatch", description="Consumer group of the dispatch stage")
    relay_interval_s: float = Field(0.5, gt=0, description="Outbox relay poll interval")
    relay_batch: int = Field(100, ge=1)
    relay_lease_s: float = Field(60.0, ge=10, description="A claimed outbox row is the relay's for this long (a crashed "
                                 "relay's rows return after it); a send starts only if it ends within it (SMTP: "
                                 "smtp.timeout_s, which must be under 90% of it; chat: in its first half, so keep it "
                                 "above twice the slowest chat send)")
    relay_max_attempts: int = Field(50, ge=1, description="After this many failed attempts an acknowledgement is "
                                    "'failed' (case events are retried until published, or dead-lettered if the bus "
                                    "refuses them for good)")
    reference_prefix: str = Field("FD", pattern=r"^[A-Z]{1,8}$")
    timezone: str = Field("Asia/Baku", description="IANA time zone of the due time acknowledgements state "
                                                 "(shown with its UTC offset), e.g. Europe/Istanbul or UTC")

    def own_addresses(self) -> frozenset[str]:
        """Addresses never acknowledged, lower-cased: ``our_addresses`` plus ``from_address``, which is
        always ours (an acknowledgement to it would answer ourselves: a mail loop)."""
        return frozenset(a.strip().lower() for a in (*self.our_addresses, self.from_address) if a.strip())

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, name: str) -> str:
        zone(name)  # raises ValueError naming the zone
        return name

    @field_validator("database_url")
    @classmethod
    def _usable_url(cls, url: str | None) -> str | None:
        problem = None if url is None else database_url_problem(url)
        if problem is not None:
            raise ValueError(problem)  # the message, never the URL: it holds the password
        return url


class SmtpSettings(ComponentSettings):
    section: ClassVar[str] = "smtp"
    host: str | None = Field(None, description="SMTP server; unset: acknowledgements go to <data_dir>/outgoing/*.eml")
    port: int = 587
    security: Literal["starttls", "ssl", "none"] = "starttls"
    username: str | None = None
    password: SecretStr | None = None
    ca_file: Path | None = Field(None, description="CA bundle to verify the server (default: system)")
    timeout_s: float = Field(30.0, gt=0, description="Deadline of one whole send (connect, TLS, login, MAIL/RCPT/"
                                                      "DATA), not of each socket operation")
