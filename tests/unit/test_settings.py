from __future__ import annotations

from pathlib import Path

import pytest

from frontdesk.errors import ConfigError
from frontdesk.settings import BusSettings, KafkaSettings, StorageSettings, known_sections


def test_components_ignore_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FRONTDESK_BUS_KIND", "kafka")
    assert BusSettings().kind == "embedded"
    assert BusSettings.load().kind == "kafka"


def test_yaml_section_and_env_priority(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "frontdesk.yaml"
    cfg.write_text("kafka:\n  bootstrap_servers: k1:9092\n  client_id: from-yaml\nbus:\n  kind: kafka\n")
    monkeypatch.setenv("FRONTDESK_KAFKA_CLIENT_ID", "from-env")
    kafka = KafkaSettings.load(cfg)
    assert kafka.bootstrap_servers == "k1:9092"
    assert kafka.client_id == "from-env"
    assert BusSettings.load(cfg).kind == "kafka"
    assert StorageSettings.load(cfg).data_dir == Path("var")


def test_secrets_are_not_printed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FRONTDESK_KAFKA_SASL_PASSWORD", "hunter2")
    kafka = KafkaSettings.load()
    assert "hunter2" not in repr(kafka) and "hunter2" not in str(kafka.model_dump())
    assert kafka.sasl_password is not None and kafka.sasl_password.get_secret_value() == "hunter2"


def test_invalid_values_name_field_and_env_var(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("bus:\n  kind: rabbitmq\n  partitions: 0\n")
    with pytest.raises(ConfigError) as info:
        BusSettings.load(cfg)
    text = str(info.value)
    assert "bus.kind" in text and "FRONTDESK_BUS_KIND" in text and "bus.partitions" in text and str(cfg) in text


def test_missing_config_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        BusSettings.load(tmp_path / "nope.yaml")


SECRET = "s3cretPW-do-not-print"


@pytest.mark.parametrize(("text", "where"), [
    (f'smtp:\n  host: smtp.example.az\n  password: "{SECRET}\n  username: support@example.az\n',
     "at line 5, column 1 (while scanning a quoted scalar from line 3, column 13)"),
    (f"smtp:\n  host: smtp.example.az\n  password: {SECRET}: extra\n", "line 3, column 34"),
    (f"http:\n  api_tokens: [{SECRET}-123\n", "at line 3, column 1 (while parsing a flow sequence from line 2"),
    (f"smtp:\n  password: *{SECRET}\n", "found undefined alias '…' at line 2, column 13"),
    (f"smtp:\n  password: !{SECRET} x\n", "line 2, column 13"),
])
def test_a_yaml_syntax_error_names_line_and_column_never_the_text(tmp_path: Path, text: str, where: str) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    with pytest.raises(ConfigError) as info:
        BusSettings.load(cfg)
    message = str(info.value)
    assert where in message and str(cfg) in message
    assert "s3cret" not in message and "do-not-print" not in message
    assert info.value.__suppress_context__, "PyYAML's error (which quotes the line) must not show in a traceback"


def test_an_unknown_top_level_section_is_refused_naming_the_known_ones(tmp_path: Path) -> None:
    cfg = tmp_path / "typo.yaml"
    cfg.write_text("smpt:\n  host: smtp.example.az\nbus:\n  kind: embedded\n")
    for cls in (BusSettings, StorageSettings):  # every section refuses the file, not only the misspelt one
        with pytest.raises(ConfigError) as info:
            cls.load(cfg)
        message = str(info.value)
        assert "unknown top-level section 'smpt' (did you mean 'smtp'?)" in message and str(cfg) in message
        assert "known sections: bus, classifier, dispatch, http, imap, kafka, metrics, replies, smtp, storage, " \
               "telegram" in message


def test_known_sections_come_from_the_settings_classes() -> None:
    assert known_sections() == {"bus", "classifier", "dispatch", "http", "imap", "kafka", "metrics", "replies",
                                "smtp", "storage", "telegram"}


def test_a_section_that_is_not_a_mapping_is_refused(tmp_path: Path) -> None:
    cfg = tmp_path / "list.yaml"
    cfg.write_text("bus: []\n")
    with pytest.raises(ConfigError, match="section 'bus' must be a mapping"):
        BusSettings.load(cfg)
    cfg.write_text("bus:\nkafka:\n")
    assert BusSettings.load(cfg).kind == "embedded", "an empty section is an empty mapping"


@pytest.mark.parametrize("name", ["FRONTDESK_BUS_KINDD", "frontdesk_bus_kindd"])
def test_an_unknown_variable_of_a_known_section_is_refused(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.setenv(name, SECRET)
    with pytest.raises(ConfigError) as info:
        BusSettings.load()
    message = str(info.value)
    assert "unknown [bus] environment variable FRONTDESK_BUS_KINDD (did you mean FRONTDESK_BUS_KIND?)" in message
    assert "FRONTDESK_BUS_<FIELD> with FIELD one of KIND, TOPIC_PREFIX, PARTITIONS" in message
    assert SECRET not in message
    assert StorageSettings.load().data_dir == Path("var"), "other sections do not care"


def test_variables_that_name_no_section_or_are_known_exceptions_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("FRONTDESK_CONFIG", "FRONTDESK_LOG_LEVEL", "FRONTDESK_TOPOLOGY_DATABASE_URL",
                 "FRONTDESK_KAFKA_JAVA_OPTS", "FRONTDESK_BUSY"):
        monkeypatch.setenv(name, "x")
    assert KafkaSettings.load().client_id == "frontdesk" and BusSettings.load().kind == "embedded"


def test_no_section_prefix_hides_another_section() -> None:
    # check_environment looks at FRONTDESK_<SECTION>_*: a section "http_admin" beside "http" would
    # make every FRONTDESK_HTTP_ADMIN_* variable an unknown [http] one.
    sections = known_sections()
    assert not [(a, b) for a in sections for b in sections if a != b and b.startswith(a + "_")]


@pytest.mark.parametrize(("url", "problem"), [
    ("postgresql+psycopg://frontdesk:S3cretPw@127.0.0.1:99999/frontdesk", "port 99999 is not in 1-65535"),
    ("mongodb://frontdesk:S3cretPw@127.0.0.1/frontdesk", "unknown database dialect"),
    ("frontdesk:S3cretPw@127.0.0.1", "not a SQLAlchemy URL"),
])
def test_an_unusable_dispatch_database_url_is_a_config_error_without_the_password(url: str, problem: str,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from dispatch.settings import DispatchSettings

    monkeypatch.setenv("FRONTDESK_DISPATCH_DATABASE_URL", url)
    with pytest.raises(ConfigError) as info:
        DispatchSettings.load()
    assert problem in str(info.value) and "S3cretPw" not in str(info.value)
    assert "dispatch.database_url" in str(info.value)


def test_usable_dispatch_database_urls_pass() -> None:
    from dispatch.settings import DispatchSettings

    for url in (None, "sqlite:///var/cases.sqlite3", "postgresql+psycopg://u:p@db:5432/frontdesk"):
        assert DispatchSettings(database_url=url).database_url == url
