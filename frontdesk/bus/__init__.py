"""Bus implementations behind one interface (:mod:`frontdesk.bus.base`).

=============  ==========================  ==============================================
``embedded``   :class:`SqliteBus`          one machine, default; durable SQLite log
``kafka``      :class:`KafkaBus`           production; Apache Kafka via kafka-python
(tests)        :class:`MemoryBus`          in-memory, fast unit tests, not durable
=============  ==========================  ==============================================
"""

from __future__ import annotations

from frontdesk.bus.base import Bus, Consumer, Lag, Outgoing, Record, Topics
from frontdesk.settings import BusSettings, KafkaSettings, StorageSettings


def open_bus(bus: BusSettings, storage: StorageSettings, kafka: KafkaSettings | None = None, *,
             trims: bool = True) -> Bus:
    """Build the configured bus, make sure the pipeline topics exist and connect it (blocking).

    With ``trims``, the embedded bus gets ``bus.embedded_retention_h``: every process that opens it
    so trims it (:mod:`frontdesk.bus.sqlite_retention`); without, it keeps everything."""
    topics = Topics(bus.topic_prefix)
    impl: Bus
    if bus.kind == "kafka":
        from frontdesk.bus.kafka import KafkaBus

        impl = KafkaBus(kafka or KafkaSettings(), topics, partitions=bus.partitions)
    else:
        from frontdesk.bus.sqlite import SqliteBus

        path = bus.embedded_path or storage.data_dir / "bus.sqlite3"
        impl = SqliteBus(path, topics, partitions=bus.partitions, session_timeout=bus.embedded_session_timeout_s,
                         retention_s=bus.embedded_retention_h * 3600 if trims else 0)
    impl.ensure_topics()
    impl.connect()
    return impl


__all__ = ["Bus", "Consumer", "Lag", "Outgoing", "Record", "Topics", "open_bus"]
