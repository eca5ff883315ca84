"""docker-compose.yml and the Dockerfile, checked statically (no Docker engine on these machines).

Every FRONTDESK_* variable must be a field of a settings class (or an option of the CLI), every
command a real ``frontdesk`` command, the values must pass the settings validation, and the
infrastructure services (Kafka KRaft, PostgreSQL, Mailpit) must agree with what the stages are told.
"""

from __future__ import annotations

import base64
import difflib
import importlib
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest
import typer.main
from typer.exceptions import TyperException
import yaml

import frontdesk
from frontdesk.cli import app
from frontdesk.errors import ConfigError
from frontdesk.settings import ComponentSettings
from frontdesk.topology.compose import (
    frontdesk_services,
    is_named_volume,
    load_compose,
    replicas_of,
    service_command,
    service_depends_on,
    service_environment,
    service_mounts,
)
from tests.harness.kafka_libs import kafka_version

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
REQUIRED = {"kafka", "postgres", "mailpit", "ingest-imap", "ingest-http", "ingest-telegram", "classify", "dispatch"}
PACKAGES = ("frontdesk", "ingest", "classify", "dispatch")


def settings_classes() -> list[type[ComponentSettings]]:
    """Every ComponentSettings subclass with a section, after importing each module defining one."""
    pattern = re.compile(r"^class \w+\(ComponentSettings\)", re.MULTILINE)
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if pattern.search(path.read_text(encoding="utf-8")):
                importlib.import_module(".".join(path.relative_to(ROOT).with_suffix("").parts))
    found, todo = [], list(ComponentSettings.__subclasses__())
    while todo:
        cls = todo.pop()
        todo.extend(cls.__subclasses__())
        if cls.section and cls.__module__.split(".")[0] in PACKAGES:
            found.append(cls)
    return found


SETTINGS = settings_classes()
FIELDS = {f"FRONTDESK_{c.section.upper()}_{name.upper()}": (c, name) for c in SETTINGS for name in c.model_fields}


def cli_envvars() -> set[str]:
    """Environment variables the CLI itself reads (``--config`` / ``FRONTDESK_CONFIG``, ...)."""
    names: set[str] = set()

    def walk(cmd: Any) -> None:
        for param in cmd.params:
            envvar = getattr(param, "envvar", None)
            names.update([envvar] if isinstance(envvar, str) else envvar or [])
        for sub in getattr(cmd, "commands", {}).values():
            walk(sub)

    walk(typer.main.get_command(app))
    return names


VALID_ENV = set(FIELDS) | cli_envvars()


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose(COMPOSE, environ={})


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    """Not interpolated: to see what is written in the file itself."""
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))


def ours(compose: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for name in frontdesk_services(compose):
        yield name, compose["services"][name]


def env_of(compose: dict[str, Any], service: str, **environ: str) -> dict[str, str]:
    return service_environment(compose["services"][service], environ)


def test_required_services_exist(compose: dict[str, Any]) -> None:
    missing = REQUIRED - set(compose["services"])
    assert not missing, f"docker-compose.yml lacks services: {sorted(missing)}"
    assert set(frontdesk_services(compose)) >= REQUIRED - {"kafka", "postgres", "mailpit"}
    assert compose["services"]["ingest-telegram"].get("profiles"), "ingest-telegram must be optional (a profile)"
    assert not compose["services"]["classify"].get("profiles")


def test_images_are_pinned(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        image = service.get("image", "")
        assert image, f"service {name}: no image"
        repo, _, tag = image.rpartition(":") if ":" in image.rsplit("/", 1)[-1] else (image, "", "")
        assert tag and tag != "latest" or "@sha256:" in image, f"service {name}: image {image!r} is not pinned"
    for name, service in ours(compose):
        assert service["image"] == f"frontdesk:{frontdesk.__version__}", f"{name}: tag the image with the version"
        assert service.get("build") == ".", f"{name}: built from the Dockerfile here"
    assert compose["services"]["kafka"]["image"] == f"apache/kafka:{kafka_version()}", \
        "deploy the Kafka version the tests run (tools/kafka/pom.xml)"


def test_commands_are_frontdesk_cli_commands(compose: dict[str, Any]) -> None:
    root = typer.main.get_command(app)
    for name, service in ours(compose):
        cmd, args = root, service_command(service)[1:]
        path = ["frontdesk"]
        while getattr(cmd, "commands", None) is not None:  # a group (typer vendors click: no isinstance)
            assert args and not args[0].startswith("-"), \
                f"service {name}: '{' '.join(path)}' needs a subcommand (global options belong in env)"
            sub = cmd.commands.get(args[0])
            assert sub is not None, f"service {name}: '{' '.join(path)} {args[0]}' is not a command " \
                                    f"(have {sorted(cmd.commands)})"
            cmd, args, path = sub, args[1:], [*path, args[0]]
        try:
            cmd.make_context(" ".join(path), list(args))
        except TyperException as exc:  # click's UsageError
            pytest.fail(f"service {name}: {' '.join(path)} {args}: {exc}")


def test_frontdesk_env_names_are_settings_fields(compose: dict[str, Any]) -> None:
    unknown = []
    for name, service in compose["services"].items():
        for key in service.get("environment") or {}:
            if key.startswith("FRONTDESK_") and key not in VALID_ENV:
                close = difflib.get_close_matches(key, VALID_ENV, n=1)
                unknown.append(f"{name}: {key}" + (f" (did you mean {close[0]}?)" if close else ""))
    assert not unknown, "environment variables that no settings class reads:\n  " + "\n  ".join(unknown)


def test_dockerfile_env_names_are_settings_fields() -> None:
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    names = set(re.findall(r"\b(FRONTDESK_[A-Z0-9_]+)=", text))
    assert names, "the Dockerfile sets no FRONTDESK_* defaults"
    assert names <= VALID_ENV, f"Dockerfile sets unknown variables: {sorted(names - VALID_ENV)}"


def test_env_values_pass_settings_validation(compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    for name, service in ours(compose):
        env = env_of(compose, name)
        config = local_path(service, env["FRONTDESK_CONFIG"])
        assert config.is_file(), f"service {name}: FRONTDESK_CONFIG {env['FRONTDESK_CONFIG']} is not a mounted file"
        with monkeypatch.context() as m:
            for key in [k for k in os.environ if k.startswith("FRONTDESK_")]:
                m.delenv(key)
            for key, value in env.items():
                m.setenv(key, value)
            for cls in {FIELDS[k][0] for k in env if k in FIELDS}:
                try:
                    cls.load(config)
                except ConfigError as exc:
                    pytest.fail(f"service {name}: {exc}")


def local_path(service: dict[str, Any], container_path: str) -> Path:
    """Where a container path of a bind mount is in this checkout."""
    for target, source in sorted(service_mounts(service).items(), key=lambda kv: -len(kv[0])):
        if not is_named_volume(source) and (container_path + "/").startswith(target.rstrip("/") + "/"):
            return ROOT / source / container_path[len(target):].lstrip("/")
    return Path("/nonexistent") / container_path.lstrip("/")


def test_paths_in_settings_are_mounted(compose: dict[str, Any]) -> None:
    for name, service in ours(compose):
        mounts = service_mounts(service)
        for key, value in env_of(compose, name).items():
            if key in FIELDS and value.startswith("/"):
                assert any((value + "/").startswith(t.rstrip("/") + "/") for t in mounts), \
                    f"service {name}: {key}={value} is not on a volume or bind mount ({sorted(mounts)})"
                if not is_named_volume(next(s for t, s in mounts.items() if (value + "/").startswith(t + "/"))):
                    assert local_path(service, value).exists(), f"service {name}: {key}={value} does not exist here"


def test_depends_on_references_exist(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, service in services.items():
        for dep in service_depends_on(service):
            assert dep in services, f"service {name} depends on unknown service {dep}"
        conditions = service.get("depends_on") or {}
        for dep, spec in (conditions.items() if isinstance(conditions, dict) else []):
            if spec.get("condition") == "service_healthy":
                assert services[dep].get("healthcheck"), f"{name} waits for {dep} to be healthy: {dep} needs a healthcheck"
    for name, _ in ours(compose):
        assert "kafka" in service_depends_on(services[name]), f"service {name} must wait for Kafka"
    assert {"postgres", "mailpit"} <= set(service_depends_on(services["dispatch"]))
    for infra in ("kafka", "postgres", "mailpit"):
        assert services[infra].get("healthcheck"), f"{infra} needs a healthcheck"


def test_classify_scales_out_in_one_consumer_group(compose: dict[str, Any]) -> None:
    classify = compose["services"]["classify"]
    replicas = replicas_of(classify)
    assert replicas > 1, "classify must run several replicas"
    env = env_of(compose, "classify")
    partitions = int(env.get("FRONTDESK_BUS_PARTITIONS", 4))
    assert partitions >= replicas, f"{replicas} classify replicas but {partitions} partitions: some would idle"
    assert int(compose["services"]["kafka"]["environment"]["KAFKA_NUM_PARTITIONS"]) >= replicas


def test_kafka_is_a_valid_single_node_kraft_config(compose: dict[str, Any]) -> None:
    env = {k: str(v) for k, v in compose["services"]["kafka"]["environment"].items()}
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}, "combined broker+controller"
    node = int(env["KAFKA_NODE_ID"])
    listeners = dict(_listener(item) for item in env["KAFKA_LISTENERS"].split(","))
    advertised = dict(_listener(item) for item in env["KAFKA_ADVERTISED_LISTENERS"].split(","))
    protocols = dict(item.split(":") for item in env.get("KAFKA_LISTENER_SECURITY_PROTOCOL_MAP", "").split(",") if item)
    for listener in listeners:
        assert listener in protocols or listener in {"PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"}, \
            f"listener {listener} has no security protocol (KAFKA_LISTENER_SECURITY_PROTOCOL_MAP)"
    controller = env["KAFKA_CONTROLLER_LISTENER_NAMES"]
    assert controller in listeners and controller not in advertised, "controller listener: listed, not advertised"
    [voter] = env["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(",")
    voter_id, _, address = voter.partition("@")
    assert int(voter_id) == node and address == f"kafka:{listeners[controller][1]}", \
        f"quorum voter {voter} must be this node ({node}) at kafka:<controller port>"
    broker_listener = env.get("KAFKA_INTER_BROKER_LISTENER_NAME", "PLAINTEXT")
    assert advertised[broker_listener] == ("kafka", listeners[broker_listener][1])
    for key in ("KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR", "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
                "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"):
        assert env[key] == "1", f"{key} must be 1 on one broker (the internal topics cannot be created otherwise)"
    assert len(base64.urlsafe_b64decode(env["CLUSTER_ID"] + "==")) == 16, "CLUSTER_ID: a base64 UUID"
    assert env["KAFKA_LOG_DIRS"] in service_mounts(compose["services"]["kafka"]), "the log dir must be a volume"
    for name, _ in ours(compose):
        bootstrap = env_of(compose, name)["FRONTDESK_KAFKA_BOOTSTRAP_SERVERS"]
        assert bootstrap == f"kafka:{listeners[broker_listener][1]}", f"{name}: bootstrap {bootstrap}"
        assert env_of(compose, name).get("FRONTDESK_KAFKA_REPLICATION_FACTOR") == "1", f"{name}: one broker"


def _listener(item: str) -> tuple[str, tuple[str, int]]:
    name, _, rest = item.partition("://")
    host, _, port = rest.rpartition(":")
    return name, (host, int(port))


@pytest.mark.parametrize("environ", [{}, {"POSTGRES_USER": "fd", "POSTGRES_PASSWORD": "an0ther-one", "POSTGRES_DB": "cases"}])
def test_database_url_matches_the_postgres_service(environ: dict[str, str]) -> None:
    compose = load_compose(COMPOSE, environ=environ)
    pg = service_environment(compose["services"]["postgres"], environ)
    url = urlsplit(service_environment(compose["services"]["dispatch"], environ)["FRONTDESK_DISPATCH_DATABASE_URL"])
    assert url.scheme == "postgresql+psycopg" and url.hostname == "postgres" and (url.port or 5432) == 5432
    got = (unquote(url.username or ""), unquote(url.password or ""), url.path.lstrip("/"))
    assert got == (pg["POSTGRES_USER"], pg["POSTGRES_PASSWORD"], pg["POSTGRES_DB"]), \
        f"dispatch connects as {got}, PostgreSQL is set up for {pg}"


def test_smtp_settings_point_to_mailpit(compose: dict[str, Any]) -> None:
    mailpit = {k: str(v) for k, v in compose["services"]["mailpit"]["environment"].items()}
    smtp_port = int(mailpit.get("MP_SMTP_BIND_ADDR", "0.0.0.0:1025").rpartition(":")[2])
    env = env_of(compose, "dispatch")
    assert env["FRONTDESK_SMTP_HOST"] == "mailpit"
    assert int(env["FRONTDESK_SMTP_PORT"]) == smtp_port, f"dispatch sends to port {env['FRONTDESK_SMTP_PORT']}, " \
                                                         f"Mailpit listens on {smtp_port}"
    tls = any(k.startswith("MP_SMTP_TLS") for k in mailpit)
    assert env["FRONTDESK_SMTP_SECURITY"] == ("starttls" if tls else "none"), "security must match Mailpit's TLS"
    assert "8025" in mailpit.get("MP_UI_BIND_ADDR", "0.0.0.0:8025")
    assert any(str(p).endswith(":8025") for p in compose["services"]["mailpit"].get("ports", [])), "publish the UI"


def test_volumes_are_declared_and_used(compose: dict[str, Any]) -> None:
    declared = set(compose.get("volumes") or {})
    used = set()
    for name, service in compose["services"].items():
        for target, source in service_mounts(service).items():
            if is_named_volume(source):
                assert source in declared, f"service {name} mounts undeclared volume {source}"
                used.add(source)
            else:
                assert (ROOT / source).exists(), f"service {name}: bind mount source {source} missing"
    assert declared == used, f"declared but unused volumes: {sorted(declared - used)}"
    cache = env_of(compose, "classify")["FRONTDESK_CLASSIFIER_CACHE_DIR"]
    assert is_named_volume(service_mounts(compose["services"]["classify"])[cache]), "model cache: a named volume"
    assert "/var/lib/postgresql/data" in service_mounts(compose["services"]["postgres"])


def test_secrets_are_not_written_in_the_file(raw: dict[str, Any]) -> None:
    for name in frontdesk_services(raw):
        for key, value in (raw["services"][name].get("environment") or {}).items():
            if key in FIELDS and "SecretStr" in str(FIELDS[key][0].model_fields[FIELDS[key][1]].annotation):
                assert value is None or "${" in str(value), f"{name}: {key} is written in the file; pass it via env"
    assert "${" in str(raw["services"]["postgres"]["environment"]["POSTGRES_PASSWORD"])
    assert "${POSTGRES_PASSWORD" in raw["services"]["dispatch"]["environment"]["FRONTDESK_DISPATCH_DATABASE_URL"]


def test_only_metrics_and_the_intended_ports_are_exposed(compose: dict[str, Any]) -> None:
    published = {name: s.get("ports", []) for name, s in compose["services"].items() if s.get("ports")}
    assert set(published) == {"mailpit", "ingest-http"}, f"published ports: {published}"
    for name, ports in published.items():
        assert all(str(p).startswith("127.0.0.1:") for p in ports), f"{name}: publish on 127.0.0.1 only"
    for name, service in ours(compose):
        env = env_of(compose, name)
        expose = {str(p) for p in service.get("expose", [])}
        if "FRONTDESK_METRICS_PORT" in env:
            assert env.get("FRONTDESK_METRICS_HOST") == "0.0.0.0", f"{name}: metrics must listen beyond localhost"
            assert expose == {env["FRONTDESK_METRICS_PORT"]}, f"{name}: expose exactly the metrics port"
    for name in ("classify", "dispatch", "ingest-imap"):
        assert "FRONTDESK_METRICS_PORT" in env_of(compose, name), f"{name}: no metrics port"


def test_dockerfile() -> None:
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    base = re.search(r"^FROM (\S+)", text, re.MULTILINE)
    assert base and re.fullmatch(r"python:3\.11(\.\d+)?-slim(-\w+)?", base.group(1)), "python:3.11-slim base"
    assert re.search(r'pip install "?\.\[model\]"?', text), "install the package with the model extra"
    user = re.findall(r"^USER (\S+)", text, re.MULTILINE)
    assert user and user[-1] not in {"root", "0"}, "run as a non-root user"
    assert "/var/cache/frontdesk/models" in text and "VOLUME" in text, "the model cache is a volume"
    ignored = (ROOT / ".dockerignore").read_text(encoding="utf-8").split()
    assert {".venv", ".git", "var"} <= set(ignored)
