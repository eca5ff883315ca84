"""isync's ``mbsync`` against the plain-text test IMAP server (``dovecot.py``).

mbsync (isync 1.4) works against it with ``SSLType None`` + ``AuthMechs
LOGIN`` -- isync refuses to send a password over an unencrypted connection
unless LOGIN is explicitly allowed.  :func:`mbsync_config` renders such a
configuration (INBOX and every folder into a local Maildir); run it with
``mbsync -c FILE -a`` (or ``-V``).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

__all__ = ["find_mbsync", "mbsync_config"]


def find_mbsync() -> tuple[Path | None, str]:
    """Locate isync's ``mbsync``: ``(path, version)`` or ``(None, reason)``."""
    which = shutil.which("mbsync")
    if not which:
        return None, "mbsync not found on PATH; apt-get install isync"
    out = subprocess.run([which, "--version"], capture_output=True, text=True, timeout=10).stdout
    return Path(which), out.strip()


def mbsync_config(
    host: str,
    port: int,
    user: str,
    password: str,
    local_dir: Path | str,
    *,
    name: str = "test",
    patterns: str = "*",
    create: str = "Near",
    expunge: str = "None",
    extra_channel_lines: tuple[str, ...] = (),
) -> str:
    """Render an isync 1.4 (``Far``/``Near``) config syncing ``user``'s mailbox
    into the Maildir ``local_dir`` (created if missing; INBOX ->
    ``local_dir/INBOX``, sub-folders verbatim, ``SyncState *`` keeps isync's
    state in the local folders).  mbsync's "Password is being sent in the
    clear" warning on stderr is expected.
    """
    Path(local_dir).mkdir(parents=True, exist_ok=True)
    local = str(Path(local_dir).absolute()).rstrip("/")
    for v in (user, password):
        if '"' in v or "\n" in v:
            raise ValueError("user/password may not contain '\"' or newlines")
    lines = [
        f"IMAPAccount {name}",
        f"Host {host}",
        f"Port {port}",
        f'User "{user}"',
        f'Pass "{password}"',
        "SSLType None",
        "AuthMechs LOGIN",
        "Timeout 20",
        "",
        f"IMAPStore {name}-remote",
        f"Account {name}",
        "",
        f"MaildirStore {name}-local",
        f"Path {local}/",
        f"Inbox {local}/INBOX",
        "SubFolders Verbatim",
        "",
        f"Channel {name}",
        f"Far :{name}-remote:",
        f"Near :{name}-local:",
        f"Patterns {patterns}",
        f"Create {create}",
        f"Expunge {expunge}",
        "SyncState *",
        *extra_channel_lines,
        "",
    ]
    return "\n".join(lines)
