"""Configuration of the test Dovecot (``dovecot.py``): the binary, the accounts its services run as,
dovecot.conf with TLS and XOAUTH2, and the passwd-file.

Standard library only. :func:`render_config` fills ``dovecot.conf.in``; :class:`DovecotTls` and
:class:`DovecotOAuth2` add what their features need:

* TLS: ``ssl = yes`` (or ``required``: no authentication before TLS) with the given PEM certificate
  chain and key, an implicit-TLS listener (``imaps``) on a port of its own, and STARTTLS on the
  plain listener. The certificates come from the tests (``trustme``), never from the system.
* XOAUTH2 / OAUTHBEARER: a ``passdb`` of driver ``oauth2`` (only for those mechanisms) that checks
  every token at an RFC 7662 introspection endpoint (``introspection_mode = post``: Dovecot POSTs
  ``token=...``; the JSON answer must say ``"active": true`` and name the user in ``username``).
  Passwords keep working through the passwd-file passdb (only for PLAIN and LOGIN).

Capabilities are Dovecot 2.3.19's defaults (pre-login IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE
IDLE LITERAL+ AUTH=PLAIN AUTH=LOGIN, plus STARTTLS with TLS, plus AUTH=XOAUTH2 AUTH=OAUTHBEARER
with OAuth2; after login also
UIDPLUS MOVE NAMESPACE CONDSTORE QRESYNC SPECIAL-USE NOTIFY ESEARCH SORT THREAD ...). Drafts,
Sent, Trash and Junk carry SPECIAL-USE flags but are not auto-created; mailboxes are Maildir++
under ``<home>/Maildir``; ``mail_max_userip_connections`` is 100 (the default 10 per user+IP is
easy to hit with IDLE watchers plus workers).
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from string import Template

from .accounts import account, group_name

_CONFIG = Template((Path(__file__).parent / "dovecot.conf.in").read_text())


def find_dovecot() -> tuple[Path | None, str]:
    """Locate the dovecot master binary: ``(path, version)`` or ``(None, reason)``."""
    candidates = [Path("/usr/sbin/dovecot")]
    which = shutil.which("dovecot")
    if which:
        candidates.append(Path(which))
    for c in candidates:
        if os.access(c, os.X_OK):
            try:
                out = subprocess.run(
                    [str(c), "--version"], capture_output=True, text=True, timeout=10,
                    stdin=subprocess.DEVNULL,
                ).stdout.strip()
            except (OSError, subprocess.SubprocessError) as exc:  # pragma: no cover
                return None, f"{c} --version failed: {exc}"
            return c, f"dovecot {out}"
    return None, "dovecot binary not found (/usr/sbin/dovecot or PATH); apt-get install dovecot-imapd"


@dataclass(frozen=True)
class ServiceAccounts:
    """Who Dovecot's processes run as; ``needing_access``: (uid, gid) pairs that must reach its dirs."""

    login_user: str
    internal_user: str
    internal_group: str
    mail_uid: int
    mail_gid: int
    needing_access: list[tuple[int, int]]


def service_accounts() -> ServiceAccounts:
    """As root: imap-login as ``dovenull``, internal services as ``dovecot``, mail as ``nobody``
    (Dovecot refuses mail access as uid 0), each falling back to ``nobody``. Otherwise all as us."""
    if os.geteuid() != 0:
        me = pwd.getpwuid(os.geteuid())
        return ServiceAccounts(me.pw_name, me.pw_name, group_name(os.getegid()), os.geteuid(), os.getegid(), [])
    login, internal, mail = account(("dovenull",)), account(("dovecot",)), account(("nobody",))
    return ServiceAccounts(login.pw_name, internal.pw_name, group_name(internal.pw_gid), mail.pw_uid, mail.pw_gid,
                           [(a.pw_uid, a.pw_gid) for a in (login, internal, mail)])


@dataclass(frozen=True)
class DovecotTls:
    """PEM files for the server (``cert_chain``: leaf first) and the CA that signed it (for clients)."""

    cert_chain: Path
    key: Path
    ca: Path
    # ssl = required: no plain-text login before STARTTLS -- but Dovecot counts a connection whose remote and
    # local IP are equal (127.0.0.1 -> 127.0.0.1) as secure, so from this machine it still accepts one
    required: bool = True


@dataclass(frozen=True)
class DovecotOAuth2:
    """Where Dovecot checks XOAUTH2 / OAUTHBEARER tokens (an RFC 7662 introspection URL)."""

    introspection_url: str
    username_attribute: str = "username"
    active_attribute: str = "active"
    active_value: str = "true"


def render_config(*, run_dir: Path, log_path: Path, users_file: Path, host: str, port: int, imaps_port: int,
                  debug: bool, accounts: ServiceAccounts, separator: str, tls: DovecotTls | None,
                  oauth2: DovecotOAuth2 | None, extra_config: str) -> str:
    """dovecot.conf for one test instance; writes the OAuth2 args file next to it if needed."""
    ssl = "no"
    if tls is not None:
        ssl = ("required" if tls.required else "yes") + f"\nssl_cert = <{tls.cert_chain}\nssl_key = <{tls.key}" \
              "\nssl_min_protocol = TLSv1.2"
    mechanisms = "plain login" + (" xoauth2 oauthbearer" if oauth2 is not None else "")
    passdbs = ""
    if oauth2 is not None:
        args = run_dir / "dovecot-oauth2.conf.ext"
        args.write_text(render_oauth2(oauth2))
        os.chmod(args, 0o644)
        passdbs = f"passdb {{\n  driver = oauth2\n  mechanisms = xoauth2 oauthbearer\n  args = {args}\n}}\n"
    return _CONFIG.substitute(
        base_dir=run_dir / "base", state_dir=run_dir / "state", log_path=log_path, port=port,
        imaps_port=imaps_port if tls is not None else 0, ssl=ssl, auth_mechanisms=mechanisms,
        oauth2_passdb=passdbs, password_mechanisms="plain login" if oauth2 is not None else "",
        debug="yes" if debug else "no", login_user=accounts.login_user, internal_user=accounts.internal_user,
        internal_group=accounts.internal_group, users_file=users_file, separator=separator,
        extra_config=extra_config, host=host,
    )


def render_oauth2(oauth2: DovecotOAuth2) -> str:
    """The ``args`` file of the oauth2 passdb: introspection only (no tokeninfo, no local validation)."""
    return "\n".join([
        "introspection_mode = post",
        f"introspection_url = {oauth2.introspection_url}",
        "force_introspection = yes",
        f"username_attribute = {oauth2.username_attribute}",
        f"active_attribute = {oauth2.active_attribute}",
        f"active_value = {oauth2.active_value}",
        "",
    ])


def write_users(users_file: Path, users: dict[str, str], uid: int, gid: int, home: dict[str, Path],
                *, wait: bool) -> None:
    """(Re)write the passwd-file so that a running Dovecot sees the change on its next lookup.

    Dovecot 2.3 reloads a passwd-file only when its st_mtime (whole seconds) or size changed, and
    stat()s it at most once per second (last_sync_time == ioloop_time). So the mtime is forced
    strictly newer, and with ``wait`` (the server runs) this blocks until the next wall-clock
    second, after which the next lookup is guaranteed to re-read the file.
    """
    text = "".join(f"{u}:{{PLAIN}}{p}:{uid}:{gid}::{home[u]}::\n" for u, p in users.items())
    try:
        if users_file.read_text() == text:
            return
    except FileNotFoundError:
        pass
    tmp = users_file.with_suffix(".tmp")
    tmp.write_text(text)
    os.chmod(tmp, 0o644)
    try:
        prev = int(users_file.stat().st_mtime)
    except FileNotFoundError:
        prev = -1
    now = time.time()
    mtime = max(int(now), prev + 1)
    os.utime(tmp, (mtime, mtime))
    os.replace(tmp, users_file)
    if wait:
        time.sleep(max(0.0, int(now) + 1 - time.time()) + 0.01)
