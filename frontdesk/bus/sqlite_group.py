"""Consumer-group membership and partition ownership of the embedded bus, kept in its file.

The rules (also in :mod:`frontdesk.bus.sqlite`): a member's *share* is its round-robin slice of the
group's partitions over the live members sorted by id; it *owns* a partition when the ``owners``
table names it. A member claims a partition of its share only while no live member owns it, and
releases a partition outside its share only when the records it polled from it have been committed
or abandoned: at its own next poll, or (``assignment``) once committed or rewound. A dead member
(process gone, or no heartbeat for the session timeout) is removed together with its ownership by
whichever member notices first.

Every function runs inside the caller's write transaction (:class:`frontdesk.bus.sqlite_store.Tx`),
so membership, ownership and, for commits, offsets change together or not at all.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from frontdesk.bus.sqlite_store import pid_alive

TopicPartition = tuple[str, int]


@dataclass(frozen=True, slots=True)
class Assignment:
    """What a member owns after a heartbeat, and which of those it took in that heartbeat."""

    owned: frozenset[TopicPartition]
    claimed: frozenset[TopicPartition]


def heartbeat(conn: sqlite3.Connection, group: str, member: str, partitions: Sequence[TopicPartition], *,
              session_timeout: float, now: float, keep: Collection[TopicPartition] = ()) -> Assignment:
    """Renew ``member``'s heartbeat, remove dead members, release what it owns outside its share
    except ``keep`` (partitions it still has polled records of in flight) and claim the free
    partitions of its share.

    ``partitions``: every partition of the member's topics, in the order all members use."""
    conn.execute("INSERT OR REPLACE INTO members(grp, member, pid, heartbeat) VALUES (?, ?, ?, ?)",
                 (group, member, os.getpid(), now))
    live = _remove_dead(conn, group, session_timeout, now)
    share = {tp for i, tp in enumerate(partitions) if live[i % len(live)] == member}
    owners = {(t, p): m for t, p, m in conn.execute("SELECT topic, partition, member FROM owners WHERE grp=?",
                                                    (group,))}
    mine = {tp for tp in partitions if owners.get(tp) == member}
    if leaving := mine - share - set(keep):
        conn.executemany("DELETE FROM owners WHERE grp=? AND topic=? AND partition=?",
                         [(group, t, p) for t, p in leaving])
        mine -= leaving
    # An owner that is not live is gone without a trace (removed by a version without ownership).
    claimed = {tp for tp in share if owners.get(tp) not in live}
    conn.executemany("INSERT OR REPLACE INTO owners(grp, topic, partition, member) VALUES (?, ?, ?, ?)",
                     [(group, t, p, member) for t, p in claimed])
    return Assignment(frozenset(mine | claimed), frozenset(claimed))


def _remove_dead(conn: sqlite3.Connection, group: str, session_timeout: float, now: float) -> list[str]:
    """Delete the group's dead members and whatever they owned; returns the live members, sorted."""
    rows = conn.execute("SELECT member, pid, heartbeat FROM members WHERE grp=?", (group,)).fetchall()
    dead = {m for m, pid, beat in rows if now - beat > session_timeout or not pid_alive(pid)}
    for m in dead:
        leave(conn, group, m)
    return sorted(m for m, _, _ in rows if m not in dead)


def commit(conn: sqlite3.Connection, group: str, member: str,
           offsets: dict[TopicPartition, int]) -> set[TopicPartition]:
    """Move the group's committed ``offsets`` (forward only) of the partitions ``member`` owns; returns
    those it does not own. If that is not empty the caller must roll the transaction back: a commit
    moves all of its offsets or none."""
    moved = conn.executemany(
        "INSERT INTO offsets(grp, topic, partition, next_offset) SELECT ?1, ?2, ?3, ?4 WHERE EXISTS (SELECT 1 FROM"
        " owners WHERE grp=?1 AND topic=?2 AND partition=?3 AND member=?5) ON CONFLICT(grp, topic, partition)"
        " DO UPDATE SET next_offset = MAX(next_offset, excluded.next_offset)",
        [(group, t, p, o, member) for (t, p), o in offsets.items()],
    ).rowcount
    if moved == len(offsets):
        return set()
    owned = {(t, p) for t, p in conn.execute("SELECT topic, partition FROM owners WHERE grp=? AND member=?",
                                             (group, member))}
    return set(offsets) - owned


def leave(conn: sqlite3.Connection, group: str, member: str) -> None:
    """Remove ``member`` and release everything it owns: the others may claim it at once."""
    conn.execute("DELETE FROM members WHERE grp=? AND member=?", (group, member))
    conn.execute("DELETE FROM owners WHERE grp=? AND member=?", (group, member))
