"""The shipped configuration loads, and the README's configuration reference names every setting."""

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
    # The reference is generated (tests/unit/test_settings_doc.py checks it is current); this checks
    # the generator did not miss a class.
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    missing = [name for name in cls.model_fields if f"| `{cls.section}.{name}` |" not in readme]
    assert not missing, f"README configuration reference lacks {cls.section}: {missing}; run `make docs`"
