from __future__ import annotations

from pathlib import Path

import pytest

from frontdesk.errors import ConfigError
from frontdesk.settings import BusSettings, KafkaSettings, StorageSettings


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
