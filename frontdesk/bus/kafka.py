"""The production bus: Apache Kafka through kafka-python.

* Producer: ``acks=all``, retries, ``max_in_flight_requests_per_connection=1`` (keeps per-key
  order across retries); ``publish`` flushes and waits for every future, so it returns only when
  the brokers acknowledged all records; ``send`` hands records to the producer's thread and
  returns, its ``Delivery.wait`` is that flush and wait.
* Consumer: a group member with ``enable_auto_commit=False``; ``commit`` commits the offsets of
  processed records synchronously. After a rebalance a commit may fail with CommitFailed; the
  records are then redelivered to the new owner (at-least-once).
* Every kafka-python exception is translated into the Frontdesk error tree here.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import (
    CommitFailedError,
    KafkaError,
    TopicAlreadyExistsError,
)
from kafka.structs import OffsetAndMetadata

from frontdesk.bus.base import DELIVERED, Bus, Consumer, Delivery, Lag, Outgoing, Record, Topics, check_sizes
from frontdesk.errors import BusError, BusUnavailable, CommitFailed
from frontdesk.settings import KafkaSettings


def client_options(settings: KafkaSettings) -> dict[str, Any]:
    """Connection options shared by producer, consumer and admin client."""
    opts: dict[str, Any] = {
        "bootstrap_servers": settings.bootstrap_servers.split(","),
        "client_id": settings.client_id,
        "security_protocol": settings.security_protocol,
        "request_timeout_ms": settings.request_timeout_ms,
        "metadata_max_age_ms": settings.metadata_max_age_ms,
    }
    if settings.sasl_mechanism:
        opts["sasl_mechanism"] = settings.sasl_mechanism
        opts["sasl_plain_username"] = settings.sasl_username
        if settings.sasl_password is not None:
            opts["sasl_plain_password"] = settings.sasl_password.get_secret_value()
    for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
        value = getattr(settings, name)
        if value is not None:
            opts[name] = str(value)
    if settings.ssl_password is not None:
        opts["ssl_password"] = settings.ssl_password.get_secret_value()
    return opts


def _translate(exc: Exception, doing: str) -> BusError:
    if isinstance(exc, OSError) or (isinstance(exc, KafkaError) and exc.retriable):
        return BusUnavailable(f"Kafka unavailable while {doing}: {exc}")
    return BusError(f"Kafka error while {doing}: {exc!r}")


class _Sent(Delivery):
    """Records the producer is sending; ``wait`` flushes and checks every future (acks=all)."""

    def __init__(self, producer: KafkaProducer, futures: list[Any], timeout: float) -> None:
        self._producer, self._futures, self._timeout = producer, futures, timeout

    def wait(self) -> None:
        if not self._futures:
            return
        try:
            self._producer.flush(timeout=self._timeout)
            for f in self._futures:
                f.get(timeout=self._timeout)
        except (KafkaError, OSError) as exc:
            raise _translate(exc, f"publishing {len(self._futures)} records") from exc
        self._futures = []


class KafkaBus(Bus):
    """Kafka-backed bus. ``publish`` is thread-safe (one shared producer)."""

    def __init__(self, settings: KafkaSettings, topics: Topics | None = None, *, partitions: int = 4) -> None:
        self.settings = settings
        self.topics = topics or Topics()
        self.default_partitions = partitions
        self.max_record_bytes = settings.max_record_bytes
        self._producer: KafkaProducer | None = None
        self._lock = threading.Lock()

    def _get_producer(self) -> KafkaProducer:
        with self._lock:
            if self._producer is None:
                try:
                    self._producer = KafkaProducer(
                        acks="all",
                        retries=2_147_483_647,
                        max_in_flight_requests_per_connection=1,
                        max_request_size=max(1_048_576, self.settings.max_record_bytes + 65_536),
                        linger_ms=self.settings.linger_ms,
                        batch_size=self.settings.batch_size,
                        delivery_timeout_ms=max(
                            int(self.settings.publish_timeout_s * 1000),
                            self.settings.request_timeout_ms + self.settings.linger_ms + 1,
                        ),
                        **client_options(self.settings),
                    )
                except (KafkaError, OSError) as exc:
                    raise _translate(exc, "connecting the producer") from exc
            return self._producer

    def publish(self, records: Sequence[Outgoing]) -> None:
        self.send(records).wait()

    def send(self, records: Sequence[Outgoing]) -> Delivery:
        if not records:
            return DELIVERED
        check_sizes(records, self.max_record_bytes)
        producer = self._get_producer()
        try:
            futures = [
                producer.send(r.topic, value=r.value, key=r.key, headers=list(r.headers) or None) for r in records
            ]
        except (KafkaError, OSError) as exc:
            raise _translate(exc, f"publishing {len(records)} records") from exc
        return _Sent(producer, futures, self.settings.publish_timeout_s)

    def connect(self) -> None:
        producer = self._get_producer()
        try:
            for topic in self.topics.all():
                producer.partitions_for(topic)  # blocks until the topic's metadata is known
        except (KafkaError, OSError) as exc:
            raise _translate(exc, "fetching the topics' metadata") from exc

    def ensure_topics(self, topics: Sequence[str] | None = None) -> None:
        names = list(topics or self.topics.all())
        try:
            admin = KafkaAdminClient(**client_options(self.settings))
        except (KafkaError, OSError) as exc:
            raise _translate(exc, "connecting the admin client") from exc
        try:
            existing = set(admin.list_topics())
            missing = [
                NewTopic(name=n, num_partitions=self.default_partitions, replication_factor=self.settings.replication_factor)
                for n in names
                if n not in existing
            ]
            if missing:
                try:
                    admin.create_topics(missing)
                except TopicAlreadyExistsError:
                    pass
            # A created topic reaches the brokers' metadata caches later than the controller's
            # answer; a group joined in between is assigned no partitions and may stay idle.
            admin.wait_for_topics(names, timeout_ms=int(self.settings.publish_timeout_s * 1000))
        except KafkaError as exc:
            raise _translate(exc, "creating topics") from exc
        finally:
            admin.close()

    def end_offsets(self, topic: str) -> dict[int, int]:
        try:
            consumer = KafkaConsumer(**client_options(self.settings))
        except (KafkaError, OSError) as exc:  # no broker to bootstrap from
            raise _translate(exc, f"reading end offsets of {topic}") from exc
        try:
            parts = consumer.partitions_for_topic(topic) or set()
            tps = [TopicPartition(topic, p) for p in sorted(parts)]
            return {tp.partition: off for tp, off in consumer.end_offsets(tps).items()}
        except (KafkaError, OSError) as exc:
            raise _translate(exc, f"reading end offsets of {topic}") from exc
        finally:
            consumer.close()

    def consumer(self, group: str, topics: Sequence[str]) -> KafkaBusConsumer:
        try:
            raw = KafkaConsumer(
                *topics,
                group_id=group,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                session_timeout_ms=self.settings.session_timeout_ms,
                heartbeat_interval_ms=max(1000, self.settings.session_timeout_ms // 3),
                max_poll_interval_ms=self.settings.max_poll_interval_ms,
                **client_options(self.settings),
            )
        except (KafkaError, OSError) as exc:
            raise _translate(exc, f"joining group {group}") from exc
        return KafkaBusConsumer(raw)

    def close(self) -> None:
        with self._lock:
            if self._producer is not None:
                self._producer.close(timeout=self.settings.publish_timeout_s)
                self._producer = None


class KafkaBusConsumer(Consumer):
    def __init__(self, raw: KafkaConsumer) -> None:
        self._raw = raw
        self._closed = False

    def poll(self, max_records: int = 500, timeout: float = 1.0) -> list[Record]:
        try:
            batches = self._raw.poll(timeout_ms=int(timeout * 1000), max_records=max_records)
        except KafkaError as exc:
            raise _translate(exc, "polling") from exc
        out = []
        for tp, msgs in batches.items():
            out.extend(
                Record(tp.topic, tp.partition, m.offset, m.value, m.key, tuple(m.headers or ()), m.timestamp)
                for m in msgs
            )
        return out

    def commit(self, records: Iterable[Record]) -> None:
        highest: dict[TopicPartition, int] = {}
        for r in records:
            tp = TopicPartition(r.topic, r.partition)
            highest[tp] = max(highest.get(tp, -1), r.offset + 1)
        if not highest:
            return
        try:
            self._raw.commit({tp: OffsetAndMetadata(o, "", -1) for tp, o in highest.items()})
        except CommitFailedError as exc:
            raise CommitFailed(f"commit rejected after a rebalance: {exc}") from exc
        except KafkaError as exc:
            raise _translate(exc, "committing offsets") from exc

    def rewind(self) -> None:
        try:
            for tp in self._raw.assignment():
                committed = self._raw.committed(tp)
                if committed is None:
                    self._raw.seek_to_beginning(tp)
                else:
                    self._raw.seek(tp, committed)
        except KafkaError as exc:
            raise _translate(exc, "rewinding to committed offsets") from exc

    def assignment(self) -> set[tuple[str, int]]:
        return {(tp.topic, tp.partition) for tp in self._raw.assignment()}

    def lag(self) -> list[Lag]:
        """Per assigned partition; a partition the group never committed counts from its oldest kept
        record (where ``auto_offset_reset=earliest`` starts it), not from 0: after retention that
        would count deleted records as lag."""
        tps = sorted(self._raw.assignment())
        try:
            ends = self._raw.end_offsets(tps) if tps else {}
            committed = {tp: self._raw.committed(tp) for tp in tps}
            never = [tp for tp, offset in committed.items() if offset is None]
            starts = self._raw.beginning_offsets(never) if never else {}
            return [Lag(tp.topic, tp.partition, c if c is not None else starts.get(tp, 0), ends.get(tp, 0))
                    for tp, c in committed.items()]
        except KafkaError as exc:
            raise _translate(exc, "reading lag") from exc

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._raw.close(autocommit=False)
