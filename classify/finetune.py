"""Fine-tuning the encoder with LoRA adapters and training the category/urgency heads.

Why LoRA: frozen e5-small embeddings with a linear head scored ~6 points of category macro-F1
below a TF-IDF baseline on the dev split (see the model card). Fine-tuning the whole encoder
would need shipping ~470 MB of weights; low-rank adapters on the attention and feed-forward
projections are ~2.5 MB, are merged into the base weights at load time (no inference cost), and
recover the gap. Training runs on CPU in minutes (see ``frontdesk train``).

Heavy imports (torch) happen inside functions; this module is imported only by the trainer and
the model loader.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

TARGETS = ("attention.self.query", "attention.self.value", "attention.output.dense", "intermediate.dense", "output.dense")


@dataclass(frozen=True)
class LoraConfig:
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.1
    epochs: int = 4
    batch_size: int = 16
    lr: float = 5e-4
    head_lr: float = 2e-3
    max_tokens: int = 128
    seed: int = 13


def _lora_module() -> Any:
    import torch
    from torch import nn

    class LoRALinear(nn.Module):
        """y = base(x) + (dropout(x) A^T B^T) * alpha/rank; only A and B train."""

        def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float) -> None:
            super().__init__()
            self.base = base
            for p in base.parameters():
                p.requires_grad_(False)
            self.lora_a = nn.Parameter(torch.empty(rank, base.in_features))
            self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank))
            nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))
            self.scale = alpha / rank
            self.drop = nn.Dropout(dropout)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.base(x) + (self.drop(x) @ self.lora_a.T @ self.lora_b.T) * self.scale

    return LoRALinear


def attach_lora(model: Any, cfg: LoraConfig) -> list[str]:
    """Replace the target Linear layers of a BERT-style encoder with LoRA-wrapped ones."""
    lora_cls = _lora_module()
    for p in model.parameters():
        p.requires_grad_(False)
    wrapped = []
    for name, module in list(model.named_modules()):
        for target in TARGETS:
            if name.endswith(target) and type(module).__name__ == "Linear":
                parent_name, _, attr = name.rpartition(".")
                parent = model.get_submodule(parent_name)
                setattr(parent, attr, lora_cls(module, cfg.rank, cfg.alpha, cfg.dropout))
                wrapped.append(name)
    return wrapped


def adapter_state(model: Any) -> dict[str, Any]:
    """The trainable LoRA tensors (what gets saved), keyed by module path."""
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items() if ".lora_" in k}


def merge_adapters(model: Any, state: dict[str, Any], alpha_over_rank: float) -> int:
    """Add B·A·scale into the base Linear weights in place (inference: zero overhead)."""
    import torch

    merged = 0
    with torch.no_grad():
        for key, a in state.items():
            if not key.endswith(".lora_a"):
                continue
            path = key[: -len(".lora_a")]
            b = state[path + ".lora_b"]
            layer = model.get_submodule(path)
            layer.weight += (b @ a) * alpha_over_rank
            merged += 1
    return merged


def finetune(
    model_dir: str, texts: Sequence[str], labels: dict[str, Sequence[str]], cfg: LoraConfig
) -> tuple[dict[str, Any], dict[str, float]]:
    """Fine-tune LoRA adapters jointly with one linear head per task. Blocking, CPU-heavy.

    Returns (adapter tensors, training stats). The heads trained here only shape the encoder;
    the shipped heads are refit on the adapted embeddings by the trainer.
    """
    import torch
    from torch import nn
    from transformers import AutoModel, AutoTokenizer

    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir)
    wrapped = attach_lora(model, cfg)
    classes = {task: sorted(set(ys)) for task, ys in labels.items()}
    targets = {t: torch.tensor([classes[t].index(y) for y in ys]) for t, ys in labels.items()}
    heads = nn.ModuleDict({t: nn.Linear(model.config.hidden_size, len(c)) for t, c in classes.items()})
    weights = {t: _balanced_weights(targets[t], len(classes[t])) for t in classes}
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW([{"params": params, "lr": cfg.lr}, {"params": heads.parameters(), "lr": cfg.head_lr}],
                            weight_decay=0.01)
    ids = tokenizer(["query: " + t for t in texts], truncation=True, max_length=cfg.max_tokens)["input_ids"]
    batches = _length_buckets(ids, cfg.batch_size, rng)
    total = cfg.epochs * len(batches)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[cfg.lr, cfg.head_lr], total_steps=total, pct_start=0.1)
    model.train()
    started, step, loss_sum = time.perf_counter(), 0, 0.0
    for epoch in range(cfg.epochs):
        rng.shuffle(batches)
        for chunk in batches:
            enc = tokenizer.pad({"input_ids": [ids[i] for i in chunk]}, return_tensors="pt")
            hidden = model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).float()
            pooled = nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
            loss = sum(nn.functional.cross_entropy(heads[t](pooled) * 20.0, targets[t][chunk], weight=weights[t])
                       for t in classes)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            loss_sum += float(loss.detach())
        log.info("epoch %d/%d loss %.3f (%.0fs)", epoch + 1, cfg.epochs, loss_sum / step, time.perf_counter() - started)
    stats = {"seconds": time.perf_counter() - started, "final_loss": loss_sum / max(step, 1),
             "wrapped_layers": float(len(wrapped)), "examples": float(len(texts))}
    return adapter_state(model), stats


def _balanced_weights(y: Any, n: int) -> Any:
    import torch

    counts = torch.bincount(y, minlength=n).float().clamp(min=1)
    return counts.sum() / (n * counts)


def _length_buckets(ids: list[list[int]], size: int, rng: random.Random) -> list[list[int]]:
    """Batches of similar length (less padding), shuffled within a window for variety."""
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]) + rng.random() * 8)
    return [order[i : i + size] for i in range(0, len(order), size)]


def save_adapters(path: Path, state: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    save_file({k: v.half() for k, v in state.items()}, str(path))


def load_adapters(path: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return {k: v.float() for k, v in load_file(str(path)).items()}
