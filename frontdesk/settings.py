"""Settings: one pydantic-settings class per component.

Sources, highest priority first: explicit constructor arguments, environment variables
(``FRONTDESK_<SECTION>_<FIELD>``, e.g. ``FRONTDESK_KAFKA_BOOTSTRAP_SERVERS``), the component's
section of the optional YAML file (``--config`` / ``FRONTDESK_CONFIG``), then defaults.

Only the CLI calls :meth:`ComponentSettings.load` (which reads the environment); components take a
settings object in their constructor and never look at ``os.environ`` themselves.

Misspellings are refused (ConfigError), never ignored: an unknown key inside a section (the classes
forbid extras), an unknown top-level section of the YAML file (the known ones are the sections of
the settings classes), and an environment variable ``FRONTDESK_<SECTION>_<X>`` of a known section
whose ``X`` is no field of it (checked when that section loads; :data:`NOT_SETTINGS` lists the
exceptions). Error messages never quote the YAML text or a variable's value: either may be a secret.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Iterable
from contextvars import ContextVar
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

from pydantic import Field, SecretStr, ValidationError
import yaml
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from frontdesk.errors import ConfigError

_CONFIG_FILE: ContextVar[Path | None] = ContextVar("frontdesk_config_file", default=None)
_ENV_ENABLED: ContextVar[bool] = ContextVar("frontdesk_env_enabled", default=False)
S = TypeVar("S", bound="ComponentSettings")
# FRONTDESK_<SECTION>_* variables that are not settings: the test harness's Kafka broker JVM options
# (tests/harness/kafka.py), which a developer's shell may export to the whole test run.
NOT_SETTINGS = frozenset({"FRONTDESK_KAFKA_JAVA_OPTS"})
_QUOTED = re.compile(r"'[^'\n]*'")


class ComponentSettings(BaseSettings):
    """Base: subclasses set ``section`` (YAML key and env prefix ``FRONTDESK_<SECTION>_``)."""

    section: ClassVar[str] = ""
    model_config = SettingsConfigDict(extra="forbid", frozen=True)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.section:
            cls.model_config = {**cls.model_config, "env_prefix": f"FRONTDESK_{cls.section.upper()}_"}

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings]
        if _ENV_ENABLED.get():
            sources.append(env_settings)
        path = _CONFIG_FILE.get()
        if path is not None:
            section = yaml_section(path, getattr(settings_cls, "section", ""))
            sources.append(InitSettingsSource(settings_cls, init_kwargs=section))
        return tuple(sources)

    @classmethod
    def load(cls: type[S], config_file: Path | None = None, **overrides: Any) -> S:
        """Read env + YAML section (CLI only).

        Raises ConfigError naming the bad field, an unknown ``FRONTDESK_<SECTION>_*`` variable of this
        section, or an unknown top-level section of the YAML file.
        """
        if config_file is not None and not Path(config_file).is_file():
            raise ConfigError(f"config file not found: {config_file}")
        check_environment(cls, os.environ)
        tokens = (_CONFIG_FILE.set(config_file), _ENV_ENABLED.set(True))
        try:
            return cls(**overrides)
        except ValidationError as exc:
            raise ConfigError(_describe(cls, exc, config_file)) from exc
        except ValueError as exc:
            raise ConfigError(f"[{cls.section}]{f' in {config_file}' if config_file else ''}: {exc}") from exc
        finally:
            _CONFIG_FILE.reset(tokens[0])
            _ENV_ENABLED.reset(tokens[1])


def yaml_section(path: Path, section: str) -> dict[str, Any]:
    """The mapping under ``section`` in a YAML file ({} when absent).

    Raises ConfigError when the file cannot be read or parsed (naming the problem, line and column,
    never the text), is not a mapping of known sections, or ``section`` is not a mapping.
    """
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or type(exc).__name__}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"cannot read config file {path}: not UTF-8 text (byte {exc.start})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"cannot read config file {path}: {yaml_problem(exc)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: top level must be a mapping of sections")
    check_sections(data, path)
    value = {} if data.get(section) is None else data[section]
    if not isinstance(value, dict):
        raise ConfigError(f"config file {path}: section '{section}' must be a mapping")
    return value


def yaml_problem(exc: yaml.YAMLError) -> str:
    """What is wrong in a YAML text and where, without its text (a line may hold a password).

    Quoted fragments of PyYAML's message (an alias or tag name may be a mistyped secret) are kept
    only when they are a token name such as ``'<stream end>'`` or one character.
    """
    if isinstance(exc, yaml.MarkedYAMLError):
        text = _QUOTED.sub(_token_or_hidden, exc.problem or "invalid YAML") + _at(exc.problem_mark)
        if exc.context:
            text += f" ({_QUOTED.sub(_token_or_hidden, exc.context)}{_at(exc.context_mark, 'from')})"
        return text
    if isinstance(exc, yaml.reader.ReaderError):
        return f"{exc.reason} at character {exc.position}"
    return f"invalid YAML ({type(exc).__name__})"


def _at(mark: yaml.Mark | None, word: str = "at") -> str:
    return f" {word} line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""


def _token_or_hidden(match: re.Match[str]) -> str:
    inner = match.group()[1:-1]
    return match.group() if len(inner) <= 1 or (inner.startswith("<") and inner.endswith(">")) else "'…'"


def check_sections(data: dict[Any, Any], path: Path) -> None:
    """Raise ConfigError naming the top-level keys of ``data`` that are not a settings section."""
    loaded = _loaded_sections()  # usually enough: importing every settings module takes ~0.3 s
    unknown = sorted(str(k) for k in data if k not in loaded)
    if not unknown:
        return
    known = known_sections()
    unknown = [k for k in unknown if k not in known]
    if unknown:
        named = ", ".join(_named(k, known, "'{}'") for k in unknown)
        raise ConfigError(f"config file {path}: unknown top-level section {named}; "
                          f"known sections: {', '.join(sorted(known))}")


def check_environment(cls: type[ComponentSettings], environ: Iterable[str]) -> None:
    """Raise ConfigError naming the ``FRONTDESK_<SECTION>_*`` variables in ``environ`` that are no
    field of ``cls`` (case-insensitive, like the settings; values are never shown)."""
    if not cls.section:
        return
    prefix = f"FRONTDESK_{cls.section.upper()}_"
    known = {prefix + name.upper() for name in cls.model_fields}
    unknown = sorted(n for n in {k.upper() for k in environ} if n.startswith(prefix)
                     and n not in known and n not in NOT_SETTINGS)
    if unknown:
        named = ", ".join(_named(n, known, "{}") for n in unknown)
        raise ConfigError(f"unknown [{cls.section}] environment variable {named}; "
                          f"the [{cls.section}] variables are {prefix}<FIELD> with FIELD one of "
                          f"{', '.join(name.upper() for name in cls.model_fields)}")


def _named(name: str, known: Iterable[str], form: str) -> str:
    close = difflib.get_close_matches(name, list(known), n=1)
    return form.format(name) + (f" (did you mean {form.format(close[0])}?)" if close else "")


def _loaded_sections() -> set[str]:
    found, todo = set(), list(ComponentSettings.__subclasses__())
    while todo:
        cls = todo.pop()
        todo.extend(cls.__subclasses__())
        found.add(cls.section)
    return found - {""}


def known_sections() -> set[str]:
    """The section of every settings class of the Frontdesk packages (imports the modules defining them)."""
    from frontdesk.settings_doc import settings_classes  # settings_doc imports this module

    return {cls.section for cls in settings_classes()}


def database_url_problem(url: str) -> str | None:
    """Why SQLAlchemy cannot use ``url`` (unparseable, port not in 1-65535, unknown dialect), or
    None. The answer never contains the URL: it holds the password."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        parsed = make_url(url)
        if parsed.port is not None and not 0 < parsed.port < 65536:
            return f"port {parsed.port} is not in 1-65535"
        parsed.get_dialect()
    except NoSuchModuleError:
        return f"unknown database dialect {parsed.drivername!r}"
    except ArgumentError:
        return "not a SQLAlchemy URL (dialect+driver://user:password@host:port/database)"
    except ValueError:
        return "the port of the URL is not a number"
    return None


def _describe(cls: type[ComponentSettings], exc: ValidationError, path: Path | None) -> str:
    where = f" (config file {path})" if path else ""
    lines = [f"invalid [{cls.section}] settings{where}:"]
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"])
        env = f"FRONTDESK_{cls.section.upper()}_{field.upper()}"
        lines.append(f"  {cls.section}.{field} (env {env}): {err['msg']}")
    return "\n".join(lines)


class StorageSettings(ComponentSettings):
    """Where the one-machine mode keeps its state."""

    section: ClassVar[str] = "storage"
    data_dir: Path = Field(Path("var"), description="Root for the embedded bus, SQLite cases, blobs, checkpoints")
    blob_dir: Path | None = Field(None, description="Content-addressed blobs; default <data_dir>/blobs")
    blob_retention_days: float | None = Field(
        None, ge=1, description="Blobs last stored longer ago are erased: daily by `frontdesk run`, and by "
        "`frontdesk blobs expire`; unset: kept (until `blobs expire --older-than-days`)")

    @property
    def blobs(self) -> Path:
        return self.blob_dir or self.data_dir / "blobs"


class BusSettings(ComponentSettings):
    """Which bus, and the topic names."""

    section: ClassVar[str] = "bus"
    kind: Literal["embedded", "kafka"] = "embedded"
    topic_prefix: str = Field("frontdesk.", pattern=r"^[A-Za-z0-9._-]*$")
    partitions: int = Field(4, ge=1, le=1024, description="Partitions per topic when created")
    embedded_path: Path | None = Field(None, description="Embedded bus file; default <data_dir>/bus.sqlite3")
    embedded_session_timeout_s: float = Field(
        30.0, gt=0,
        description="Seconds; an embedded-bus group member that has not polled for this long is dead and the "
        "others take its partitions over (at once when its process is gone)")
    embedded_retention_h: float = Field(
        168.0, ge=0,
        description="Hours; every stage command using the embedded bus deletes its records older than this (168 = "
        "7 days, Kafka's default retention.ms) once every group consuming their topic has committed them; a group "
        "that starts later cannot read them. 0 keeps everything")


class KafkaSettings(ComponentSettings):
    """kafka-python client options, including TLS and SASL."""

    section: ClassVar[str] = "kafka"
    bootstrap_servers: str = "127.0.0.1:9092"
    client_id: str = "frontdesk"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    ssl_password: SecretStr | None = None
    replication_factor: int = Field(1, ge=1)
    request_timeout_ms: int = Field(30_000, ge=1000)
    publish_timeout_s: float = Field(60.0, gt=0)
    session_timeout_ms: int = Field(10_000, ge=1000)
    max_poll_interval_ms: int = Field(300_000, ge=1000)
    metadata_max_age_ms: int = Field(
        30_000, ge=1000,
        description="Refresh cluster metadata at least this often; bounds how long a consumer group that missed "
        "a new topic's or partition's metadata stays unassigned (kafka-python's default is 5 min)")
    max_record_bytes: int = Field(
        1_000_000, ge=65_536,
        description="Largest record (value + key + headers) a stage publishes; an output over it is dead-lettered, "
        "a dead letter's original bytes are cut to fit. Keep it under the broker's and topics' message.max.bytes "
        "(1,048,588 by default)")
    linger_ms: int = Field(5, ge=0)
    batch_size: int = Field(
        262_144, ge=1024,
        description="Producer batch per partition, bytes; kafka-python's default (16 KiB) holds ~4 mails, so "
        "a batch of 200 took ~10 sequential requests")
