"""README's configuration reference is generated from the settings classes and cannot drift."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
from pydantic import SecretStr

from frontdesk import settings_doc
from frontdesk.settings import ComponentSettings
from frontdesk.settings_doc import BEGIN, END, readme_block, render, replace_block, settings_classes, type_text

SECTIONS = {"storage", "bus", "kafka", "imap", "http", "telegram", "replies", "classifier", "dispatch", "smtp"}


def test_readme_block_is_the_generated_reference() -> None:
    readme = settings_doc.README.read_text(encoding="utf-8")
    assert readme_block(readme) == render(), (
        "README.md's configuration reference is out of date: run `make docs` "
        "(frontdesk config-reference --write) and commit README.md")


def test_every_field_of_every_settings_class_is_documented() -> None:
    classes = settings_classes()
    assert SECTIONS <= {c.section for c in classes}
    assert [c.section for c in classes] == sorted(c.section for c in classes)
    text = render()
    for cls in classes:
        for name in cls.model_fields:
            env = f"FRONTDESK_{cls.section.upper()}_{name.upper()}"
            assert f"| `{env}` | `{cls.section}.{name}` |" in text, env
    assert "| (in the JSON list) | `imap.mailboxes[].host` | `str` | required |" in text


def test_types_defaults_and_secrets_are_rendered_for_readers() -> None:
    text = render()
    assert "| `FRONTDESK_BUS_KIND` | `bus.kind` | `embedded` \\| `kafka` | `embedded` |" in text
    assert "| `FRONTDESK_BUS_PARTITIONS` | `bus.partitions` | `int` (≥ 1, ≤ 1024) | `4` |" in text
    assert "| `FRONTDESK_KAFKA_SASL_PASSWORD` | `kafka.sasl_password` | secret | unset |" in text
    assert "| `FRONTDESK_HTTP_API_TOKENS` | `http.api_tokens` | list of secret | none |" in text
    assert "| `FRONTDESK_DISPATCH_ROUTING_FILE` | `dispatch.routing_file` | `path` | `config/routing.yaml` |" in text
    assert "`~/.cache/frontdesk/models`" in text
    assert str(settings_doc.ROOT) not in text and str(Path.home()) not in text  # the same on every machine
    assert type_text(SecretStr | None) == "secret" and type_text(tuple[SecretStr, ...]) == "list of secret"


def test_a_new_settings_module_appears_without_touching_the_generator(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "newstage"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "knobs.py").write_text(textwrap.dedent('''
        from typing import ClassVar
        from pydantic import Field, SecretStr
        from frontdesk.settings import ComponentSettings

        class KnobSettings(ComponentSettings):
            """Knobs | of the new stage."""
            section: ClassVar[str] = "knobs"
            speed: int = Field(3, ge=1, description="Turns per second; see <data_dir>/knobs")
            key: SecretStr | None = None
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(settings_doc, "ROOT", tmp_path)
    monkeypatch.setattr(settings_doc, "PACKAGES", ("newstage",))
    try:
        sections = [c.section for c in settings_classes()]
        text = render()
    finally:
        sys.modules.pop("newstage.knobs", None)
        sys.modules.pop("newstage", None)
    assert sections == ["knobs"]
    assert "### `knobs`\n\nKnobs | of the new stage." in text
    assert "| `FRONTDESK_KNOBS_SPEED` | `knobs.speed` | `int` (≥ 1) | `3` | Turns per second; see \\<data_dir>/knobs |" in text
    assert "| `FRONTDESK_KNOBS_KEY` | `knobs.key` | secret | unset |" in text


def test_classes_outside_the_packages_are_ignored() -> None:
    class Stray(ComponentSettings):
        section = "stray"  # type: ignore[assignment]

    assert "stray" not in {c.section for c in settings_classes()}


def test_replace_block_keeps_everything_around_the_markers() -> None:
    text = f"# Title\n\nbefore\n{BEGIN}\nold table\n{END}\nafter\n"
    assert replace_block(text, "new\n") == f"# Title\n\nbefore\n{BEGIN}\nnew\n{END}\nafter\n"
    assert readme_block(replace_block(text, "new\n")) == "new\n"
    with pytest.raises(ValueError, match="settings:begin"):
        replace_block("no markers here", "x")
