"""``frontdesk parse-mail`` on hostile files: JSON of an inert message, or a non-zero exit with the reason."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.hostile.mail import SCRIPT_MARKERS, build_hostile_mails

SELECTED = ("zip-bomb-2gib", "html-script-vectors", "html-unterminated-tags", "html-nested-blockquotes-40000",
            "encoded-word-crlf-name", "binary-garbage", "nesting-200-multipart", "subject-1mb", "parts-10000")
MAILS = [m for m in build_hostile_mails() if m.name in SELECTED]


@pytest.mark.parametrize("mail", MAILS, ids=lambda m: m.name)
def test_parse_mail_cli_on_hostile_input(mail, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "hostile.eml"
    path.write_bytes(mail.raw)
    env = {**os.environ, "FRONTDESK_STORAGE_DATA_DIR": str(tmp_path / "var")}
    out = subprocess.run([sys.executable, "-m", "frontdesk", "parse-mail", str(path), "--json"], capture_output=True,
                         text=True, timeout=120, env=env)
    if mail.rejected is not None:
        assert out.returncode != 0 and mail.rejected in out.stderr, out.stderr[-500:]
        assert "Traceback" not in out.stderr
        return
    assert out.returncode == 0, out.stderr[-1500:]
    view = json.loads(out.stdout)
    for key in ("subject", "sender_name", "text", "full_text"):
        value = (view[key] or "").lower()
        assert not any(marker in value for marker in SCRIPT_MARKERS), (key, value[:300])
        assert not any(word.lower() in value for word in mail.never), (key, value[:300])
    assert all(fragment in view["text"] for fragment in mail.text_has)
    assert not set(view["subject"] + (view["sender_name"] or "")) & set("\r\n\x00")
