"""kafka-python checksums every record batch it produces and consumes (CRC-32C); without the
``crc32c`` package it does so in pure Python (~80 µs a KB: 0.7 CPU s per 2,000 mails produced,
and as much again per consumer). The dependency must stay installed and picked up."""

from __future__ import annotations

import os

from kafka.record import util
from kafka.record._crc32c import crc as pure_python_crc


def test_kafka_python_uses_the_c_crc32c() -> None:
    data = os.urandom(4096)
    assert util._crc32c is not pure_python_crc, "install the crc32c package (pyproject dependency)"
    assert util.calc_crc32c(data) == pure_python_crc(data)
