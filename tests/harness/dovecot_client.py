"""The harness's own IMAP client side (stdlib only): is Dovecot up, and APPEND a test mail."""

from __future__ import annotations

import imaplib
import socket
import ssl
from pathlib import Path


def probe_greeting(host: str, port: int) -> object:
    """None once an IMAP greeting (``* OK``) arrives on ``host:port``, else what came instead."""
    try:
        with socket.create_connection((host, port), timeout=2) as s:
            line = b""
            while b"\n" not in line and len(line) < 4096:
                chunk = s.recv(4096)
                if not chunk:
                    break
                line += chunk
            if line.startswith(b"* OK"):
                try:
                    s.sendall(b"z LOGOUT\r\n")
                except OSError:
                    pass
                return None
            return line
    except OSError as exc:
        return exc


def append_message(host: str, port: int, user: str, password: str, message: bytes | str, folder: str = "INBOX",
                   flags: str = "", *, create: bool = True, ca: Path | None = None) -> None:
    """APPEND a raw RFC 5322 message to ``user``'s ``folder`` (created unless INBOX or ``create`` is
    false); with ``ca``, STARTTLS first, trusting that CA. Raises RuntimeError if refused."""
    if isinstance(message, str):
        message = message.encode()
    m = imaplib.IMAP4(host, port, timeout=30)
    try:
        if ca is not None:
            m.starttls(ssl.create_default_context(cafile=str(ca)))
        m.login(user, password)
        if create and folder.upper() != "INBOX":
            m.create(_quote(folder))
        typ, data = m.append(_quote(folder), flags or None, None, message)
        if typ != "OK":
            raise RuntimeError(f"APPEND failed: {typ} {data}")
    finally:
        try:
            m.logout()
        except Exception:
            pass


def _quote(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
