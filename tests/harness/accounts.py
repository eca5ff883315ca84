"""Unprivileged accounts for harness servers started as root, and where they can reach.

Servers that refuse to run as root (PostgreSQL) or drop privileges for some
processes (Dovecot) need a system account and a run dir that account can
traverse to.  pytest's ``tmp_path`` lives under ``/tmp/pytest-of-root`` (mode
0700), so :func:`usable_dir` says when a private ``/tmp`` dir is needed instead.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
from collections.abc import Iterable
from pathlib import Path


def account(names: tuple[str, ...], fallback: str = "nobody") -> pwd.struct_passwd:
    """The first of ``names`` (then ``fallback``) that exists."""
    for n in (*names, fallback):
        try:
            return pwd.getpwnam(n)
        except KeyError:
            continue
    raise RuntimeError(f"none of the accounts {names + (fallback,)} exist")


def group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:  # pragma: no cover
        return str(gid)


def traversable_by(path: Path, uid: int, gid: int) -> bool:
    """True if every existing directory from / down to ``path`` is searchable by uid/gid."""
    try:
        groups = set(os.getgrouplist(pwd.getpwuid(uid).pw_name, gid))
    except KeyError:  # pragma: no cover
        groups = {gid}
    path = path.resolve()
    for p in [*reversed(path.parents), path]:
        try:
            st = p.stat()
        except FileNotFoundError:
            break  # will be created by us (and chowned)
        if uid == 0:
            continue
        if st.st_uid == uid:
            ok = st.st_mode & stat.S_IXUSR
        elif st.st_gid in groups:
            ok = st.st_mode & stat.S_IXGRP
        else:
            ok = st.st_mode & stat.S_IXOTH
        if not ok:
            return False
    return True


def usable_dir(workdir: Path, ids: Iterable[tuple[int, int]]) -> bool:
    """Create ``workdir``; True if every ``(uid, gid)`` in ``ids`` can traverse to it."""
    workdir.mkdir(parents=True, exist_ok=True)
    return all(traversable_by(workdir.parent, uid, gid) for uid, gid in ids)
