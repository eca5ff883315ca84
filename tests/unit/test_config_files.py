"""The shipped configuration loads, and the README's configuration table names every setting."""

from __future__ import annotations

from pathlib import Path

import pytest

from classify.settings import ClassifierSettings
from dispatch.chat_repliers import ChatReplySettings
from dispatch.routing import RoutingTable
from dispatch.settings import DispatchSettings, SmtpSettings
from frontdesk.settings import BusSettings, ComponentSettings, KafkaSettings, StorageSettings
from ingest.http import HttpIntakeSettings
from ingest.imap_settings import ImapSettings
from ingest.telegram import TelegramSettings

ROOT = Path(__file__).resolve().parents[2]
ALL = [StorageSettings, BusSettings, KafkaSettings, ImapSettings, HttpIntakeSettings, TelegramSettings,
       ChatReplySettings, ClassifierSettings, DispatchSettings, SmtpSettings]


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.section)
def test_default_config_file_loads(cls: type[ComponentSettings]) -> None:
    assert cls.load(ROOT / "config" / "frontdesk.yaml")


def test_default_routing_rules_load() -> None:
    assert RoutingTable.load(ROOT / "config" / "routing.yaml")


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.section)
def test_readme_documents_every_setting(cls: type[ComponentSettings]) -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    row = next(line for line in readme.splitlines() if line.startswith(f"| `{cls.section}` |"))
    missing = [name for name in cls.model_fields if f"`{name}`" not in row]
    assert not missing, f"README configuration table lacks {cls.section}: {missing}"
