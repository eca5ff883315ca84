"""The options every Kafka client gets (frontdesk.bus.kafka.client_options)."""

from __future__ import annotations

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from pydantic import SecretStr

from frontdesk.bus.kafka import client_options
from frontdesk.settings import KafkaSettings


def test_every_option_is_one_each_kafka_python_client_knows() -> None:
    opts = client_options(KafkaSettings(
        bootstrap_servers="a:9092,b:9093", security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512",
        sasl_username="fd", sasl_password=SecretStr("pw"), ssl_cafile="/etc/ca.pem", ssl_password=SecretStr("k")))
    for client in (KafkaConsumer, KafkaProducer, KafkaAdminClient):
        assert set(opts) <= set(client.DEFAULT_CONFIG), (client.__name__, set(opts) - set(client.DEFAULT_CONFIG))
    assert opts["bootstrap_servers"] == ["a:9092", "b:9093"]
    assert (opts["sasl_plain_password"], opts["ssl_password"], opts["ssl_cafile"]) == ("pw", "k", "/etc/ca.pem")


def test_metadata_is_refreshed_well_within_kafka_pythons_five_minutes() -> None:
    """A group that joined before a new topic's metadata reached it is assigned nothing until the next
    refresh; a bounded metadata age keeps that from idling a stage for minutes."""
    assert client_options(KafkaSettings())["metadata_max_age_ms"] == 30_000
    assert KafkaConsumer.DEFAULT_CONFIG["metadata_max_age_ms"] == 300_000


def test_end_offsets_without_a_broker_is_bus_unavailable_not_a_raw_kafka_error(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import pytest
    from kafka.errors import KafkaTimeoutError

    import frontdesk.bus.kafka as kafka_bus
    from frontdesk.errors import BusUnavailable
    from frontdesk.settings import KafkaSettings

    for error in (KafkaTimeoutError("Unable to bootstrap from [(127.0.0.1, 1)]"), ConnectionRefusedError(111, "refused")):
        def refuse(*args: object, error: Exception = error, **kwargs: object) -> None:
            raise error

        monkeypatch.setattr(kafka_bus, "KafkaConsumer", refuse)
        with pytest.raises(BusUnavailable, match="reading end offsets of frontdesk.inbound"):
            kafka_bus.KafkaBus(KafkaSettings()).end_offsets("frontdesk.inbound")
