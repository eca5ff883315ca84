"""The shipped configuration loads, and the README's configuration reference names every setting."""

from __future__ import annotations

from pathlib import Path

import pytest

from dispatch.routing import RoutingTable
from frontdesk.settings import ComponentSettings
from frontdesk.settings_doc import settings_classes

ROOT = Path(__file__).resolve().parents[2]
ALL = settings_classes()  # every ComponentSettings subclass in the packages, found by the doc generator


def test_every_component_has_settings_here() -> None:
    assert {c.section for c in ALL} >= {"storage", "bus", "kafka", "imap", "http", "telegram", "replies",
                                        "classifier", "dispatch", "smtp", "metrics"}


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
