"""What the HTTP intake put on the bus, per connector: the ``frontdesk_connector_published_total`` and
``frontdesk_connector_dead_lettered_total`` of its webhooks and of the messages API.

The ``connector`` label comes from the settings only, never from a request: a webhook is counted
under its configured connector (``http.telegram_connector``, ``whatsapp_connector``, …), and every
``POST /v1/messages`` under ``http`` (:data:`API_CONNECTOR`), whatever ``platform`` its body names,
since a label taken from a body would grow with what clients send. A body is counted once the bus
has it (``publish`` returned); a retried body is counted again, as the Telegram poller counts a
batch it has to publish again.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from frontdesk.metrics import Metrics

API_CONNECTOR = "http"


@dataclass
class Tally:
    """The fields :mod:`frontdesk.metrics` reads from a connector's ``health``."""

    published: int = 0
    dead_lettered: int = 0


class ConnectorTally:
    """A connector as :meth:`Metrics.watch_connector` expects it: ``connector`` and ``health``."""

    def __init__(self, connector: str) -> None:
        self.connector, self.health = connector, Tally()


class IntakeTallies:
    """One tally per connector the app publishes under, watched by ``metrics`` for as long as this
    object lives (the app keeps it). Updated on the event loop only, so without a lock."""

    def __init__(self, connectors: Iterable[str], metrics: Metrics) -> None:
        self._metrics = metrics
        self._tallies: dict[str, ConnectorTally] = {}
        for name in connectors:  # exported from the start, at 0, so that rates are defined
            self._tally(name)

    def count(self, connector: str, published: int, dead_lettered: int) -> None:
        """Add what one request put on the bus under ``connector`` (a name from the settings)."""
        health = self._tally(connector).health
        health.published += published
        health.dead_lettered += dead_lettered

    def _tally(self, connector: str) -> ConnectorTally:
        if connector not in self._tallies:
            self._tallies[connector] = ConnectorTally(connector)
            self._metrics.watch_connector(self._tallies[connector])
        return self._tallies[connector]
