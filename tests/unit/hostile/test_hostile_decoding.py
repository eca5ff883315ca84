"""Decoding is total: poison bus records raise DecodeError, any charset label gives text, bombs are real."""

from __future__ import annotations

import base64
import encodings.aliases
import gzip
import io
import random
import zipfile
import zlib

import pytest

from frontdesk.codec import decode
from frontdesk.errors import DecodeError
from frontdesk.messages import InboundMessage, TriagedMessage
from ingest.mail.text import codec_for, decode_bytes, decode_header_value
from tests.fixtures.hostile.bombs import GiB, MiB, crc32_of_zeros, gzip_bomb, zip_bomb
from tests.fixtures.hostile.payloads import Poison, poison_records

CASES = [(topic, p) for topic in ("inbound", "triaged") for p in poison_records(topic)]


@pytest.mark.parametrize(("topic", "poison"), CASES, ids=[f"{t}-{p.name}" for t, p in CASES])
def test_poison_records_raise_decode_error_with_the_bytes_and_a_reason(topic: str, poison: Poison) -> None:
    expected = InboundMessage if topic == "inbound" else TriagedMessage
    with pytest.raises(DecodeError) as caught:
        decode(poison.value, expected)
    assert poison.reason in caught.value.reason and caught.value.raw == poison.value


def test_every_codec_name_python_knows_decodes_without_raising() -> None:
    """A charset label is attacker-chosen: zlib, base64, rot13, idna, unicode_escape... must not break a mail."""
    names = set(encodings.aliases.aliases) | set(encodings.aliases.aliases.values())
    data = random.Random(3).randbytes(300) + "çıxarış \\u003cscript\\u003e".encode()
    for name in sorted(names):
        text = decode_bytes(data, name)
        assert isinstance(text, str) and "<script" not in text, name
        header = decode_header_value(f"=?{name}?b?{base64.b64encode(data).decode()}?=")
        assert isinstance(header, str), name
    for name in ("zlib", "bz2", "base64", "hex", "rot13", "uu", "quopri", "idna", "punycode", "unicode_escape",
                 "raw_unicode_escape", "undefined"):
        assert codec_for(name) is None, name
    assert [codec_for(n) for n in ("koi8-r", "windows-1251", "utf-8", "iso-8859-9")] == [
        "koi8-r", "cp1251", "utf-8", "iso8859-9"]


def test_the_bombs_are_real_and_small() -> None:
    bomb = zip_bomb(2 * GiB)
    assert len(bomb) < 3 * MiB
    archive = zipfile.ZipFile(io.BytesIO(bomb))
    [member] = archive.infolist()
    assert member.file_size == 2 * GiB and member.compress_size < 3 * MiB
    with archive.open(member) as stream:  # inflate only the first 32 MiB
        assert stream.read(32 * MiB) == bytes(32 * MiB)
    assert zipfile.ZipFile(io.BytesIO(zip_bomb(8 * MiB))).testzip() is None  # CRC and sizes check out
    assert gzip.decompress(gzip_bomb(4 * MiB)) == bytes(4 * MiB)
    assert crc32_of_zeros(8 * MiB) == zlib.crc32(bytes(8 * MiB))
    with gzip.open(io.BytesIO(gzip_bomb(GiB))) as stream:
        assert stream.read(MiB) == bytes(MiB)
