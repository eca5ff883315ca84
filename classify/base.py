"""The Classifier interface, and a keyword classifier used as the in-memory fake in tests."""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from frontdesk.messages import Triage

CATEGORIES = (
    "payments", "account_access", "verification", "bonuses", "betting", "technical",
    "security", "responsible_gambling", "complaint", "general", "spam",
)
URGENCIES = ("critical", "high", "normal", "low")


@dataclass(frozen=True, slots=True)
class TextItem:
    """What a classifier reads of one message."""

    text: str
    subject: str = ""
    channel: str = "email"


class Classifier(ABC):
    """Tags category, urgency and language. ``classify`` is blocking and deterministic."""

    model_version: str

    @abstractmethod
    def classify(self, items: Sequence[TextItem]) -> list[Triage]:
        """One Triage per item, in order. Raises ClassifierError if the model cannot run."""

    def classify_stream(self, items: Sequence[TextItem]) -> Iterator[tuple[Sequence[int], list[Triage]]]:
        """The same Triages, in chunks as they are ready: ``(indices into items, their Triages)``,
        every index exactly once, in any order. By default one chunk (``classify``)."""
        if items:
            yield range(len(items)), self.classify(items)


class KeywordClassifier(Classifier):
    """A tiny rule-based classifier: fast, dependency-free, for unit tests and demos."""

    model_version = "keywords-1"

    def __init__(self, chunk: int | None = None) -> None:
        self.chunk = chunk  # ``classify_stream`` in chunks of this size, as the model streams its encoder batches
    _RULES: tuple[tuple[str, str, str], ...] = (
        ("security", "critical", r"hack|взлом|oğurla|ogurla|unauthori[sz]ed|не я"),
        ("responsible_gambling", "critical", r"self.?exclu|block me|самоисключ|bloklay[ıi]n|limit"),
        ("payments", "high", r"withdraw|вывод|çıxarış|cixaris|çekim|cekim|deposit|депозит|pul|para"),
        ("account_access", "normal", r"log ?in|password|пароль|şifr|sifr|giriş|giris"),
        ("verification", "normal", r"passport|паспорт|verif|верифик|doğrula|dogrula|sənəd|senet"),
        ("bonuses", "normal", r"bonus|бонус|promo|freespin|free ?bet"),
        ("betting", "normal", r"\bbet\b|ставк|mərc|merc|bahis|kupon|odds"),
        ("spam", "low", r"backlink|seo|unsubscribe"),
    )

    def classify(self, items: Sequence[TextItem]) -> list[Triage]:
        return [self._one(item) for item in items]

    def classify_stream(self, items: Sequence[TextItem]) -> Iterator[tuple[Sequence[int], list[Triage]]]:
        if self.chunk is None:
            yield from super().classify_stream(items)
            return
        for start in range(0, len(items), self.chunk):
            part = range(start, min(start + self.chunk, len(items)))
            yield part, [self._one(items[i]) for i in part]

    def _one(self, item: TextItem) -> Triage:
        text = f"{item.subject} {item.text}".lower()
        category, urgency = "general", "low"
        for cat, urg, pattern in self._RULES:
            if re.search(pattern, text):
                category, urgency = cat, urg
                break
        language = "ru" if re.search(r"[а-я]", text) else "en"
        return Triage(category=category, urgency=urgency, language=language,
                      confidence={"category": 1.0, "urgency": 1.0, "language": 0.5},
                      model_version=self.model_version)
