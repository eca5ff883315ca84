"""Crash points for the fault tests: ``crashpoint("name")`` SIGKILLs the process when armed.

Production code marks the places between two effects (e.g. after the database commit, after the
SMTP server accepted). Only the CLI arms them, from ``FRONTDESK_CRASH_AT=name[:n],...`` (crash on
the n-th time the point is reached, default 1). Unarmed, a crash point costs one dict lookup.
"""

from __future__ import annotations

import os
import signal
import threading

_armed: dict[str, int] = {}
_lock = threading.Lock()


def arm(spec: str) -> None:
    """Arm crash points from 'a:3,b' (crash at the 3rd 'a' and the 1st 'b')."""
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, _, count = part.partition(":")
        _armed[name] = int(count or 1)


def crashpoint(name: str) -> None:
    if name not in _armed:
        return
    with _lock:
        _armed[name] -= 1
        if _armed[name] > 0:
            return
    os.kill(os.getpid(), signal.SIGKILL)
