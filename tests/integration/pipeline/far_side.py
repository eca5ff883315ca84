"""The far side of the end-to-end test (``test_end_to_end.py``): customers' messages.

:class:`Inputs` are the run's messages, one per source, in four languages, with what their cases
must look like. The Bot API is :class:`tests.harness.bot_api.BotApiStandIn` (getUpdates only);
acknowledgements go to the recording server (``tests/harness/recorder.py``), configured as the
repliers' base URL.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from typing import Any

from dispatch.settings import CONFIG_DIR

TG_CHAT, TG_MESSAGE, WA_ID, WA_PHONE_ID, VISITOR = 6123400017, 3301, "994551112233", "106540352242922", "visitor-e2e"


def closing_line(language: str) -> str:
    """The acknowledgement template's last line without placeholders: says which language was used."""
    text = (CONFIG_DIR / "templates" / f"ack.{language}.txt.j2").read_text(encoding="utf-8")
    text = re.sub(r"\{#.*?#\}", "", text, flags=re.S)
    return [line for line in text.splitlines() if line.strip() and "{" not in line][-1].strip()


def mail(sender: str, name: str, subject: str, body: str, *, headers: dict[str, str] | None = None) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = f"{name} <{sender}>"
    msg["To"] = "support@frontdesk.example"
    msg["Subject"], msg["Date"] = subject, format_datetime(datetime.now(UTC))
    msg["Message-ID"] = make_msgid(domain="customers.example")
    for key, value in (headers or {}).items():
        msg[key] = value
    msg.set_content(body)
    return msg


def address(msg: EmailMessage) -> str:
    return str(msg["From"].addresses[0].addr_spec)


def whatsapp_payload(run: str, text: str) -> dict[str, Any]:
    """A WhatsApp Cloud API webhook with one text message from ``WA_ID``."""
    value = {"messaging_product": "whatsapp",
             "metadata": {"display_phone_number": "994125550100", "phone_number_id": WA_PHONE_ID},
             "contacts": [{"profile": {"name": "Rauf Həsənov"}, "wa_id": WA_ID}],
             "messages": [{"from": WA_ID, "id": f"wamid.E2E{run}", "timestamp": str(int(time.time())),
                           "text": {"body": text}, "type": "text"}]}
    return {"object": "whatsapp_business_account",
            "entry": [{"id": "102290129340398", "changes": [{"value": value, "field": "messages"}]}]}


def telegram_update(run: str, text: str) -> dict[str, Any]:
    """A private-chat text message from ``TG_CHAT``, as getUpdates serves it."""
    person = {"id": TG_CHAT, "first_name": "Emre", "last_name": "Yılmaz", "username": f"emre_{run}"}
    return {"update_id": 900_000_000 + int(run[:6], 16) % 1_000_000,
            "message": {"message_id": TG_MESSAGE, "from": {**person, "is_bot": False, "language_code": "tr"},
                        "chat": {**person, "type": "private"}, "date": int(time.time()), "text": text}}


class Inputs:
    """The run's messages; :meth:`expected` says what case each must open."""

    def __init__(self, run: str) -> None:
        self.run = run
        self.ru = mail(f"olga.{run}@mail.example", "Ольга Смирнова", "Не могу вывести выигрыш",
                       "Здравствуйте! Уже пятый день не могу вывести выигрыш 350 манат на карту, заявка на вывод "
                       "висит в статусе «в обработке». Верните мои деньги или объясните причину задержки.")
        self.az_cyrl = mail(f"elchin.{run}@mail.example", "Елчин Гасымов", "Депозит балансда ҝөрүнмүр",
                            "Салам, дүнән картымдан 50 манат депозит етдим, пул картдан чыхыб амма балансымда "
                            "ҝөрүнмүр. Хаһиш едирәм јохлајын.")
        self.auto = mail(f"kamran.{run}@mail.example", "Kamran Əliyev", "Automatic reply: Out of office",
                         "I am out of the office until Monday with limited access to email. For urgent matters "
                         "please contact my colleague.", headers={"Auto-Submitted": "auto-replied"})
        self.whatsapp = whatsapp_payload(run, "Salam, hesabımı sındırıblar! Kimsə parolumu dəyişib və balansımdan "
                                              "pulu çıxarıb, mən heç nə etməmişəm. Təcili hesabımı bloklayın.")
        self.telegram = telegram_update(run, "Merhaba, hoş geldin bonusum hesabıma yüklenmedi. Promosyon kodunu "
                                             "girdim ama bonus bakiyemde görünmüyor.")
        self.chat = {"channel": "chat", "platform": "webchat", "external_id": f"e2e-{run}-chat",
                     "author": {"id": VISITOR, "name": "John Carter"}, "conversation_id": f"e2e-{run}-conv",
                     "text": "Hi, I uploaded my passport and a utility bill for verification three days ago but my "
                             "account is still not verified. How long does the document check take?"}

    @property
    def mails(self) -> tuple[EmailMessage, ...]:
        return self.ru, self.az_cyrl, self.auto

    def follow_up(self, ack_message_id: str) -> EmailMessage:
        """The Russian customer's reply to our acknowledgement. The subject has no case reference, so
        only In-Reply-To / References can thread it."""
        return mail(address(self.ru), "Ольга Смирнова", "Re: Не могу вывести выигрыш",
                    "Добрый день, есть новости по моему выводу? Прошло уже шесть дней, деньги так и не пришли.",
                    headers={"In-Reply-To": ack_message_id, "References": f"{self.ru['Message-ID']} {ack_message_id}"})

    def expected(self) -> dict[str, tuple[str, set[str], str, bool]]:
        """External id -> (connector, categories, language, acknowledged) of the case it opens.

        No categories: not asserted (an out-of-office text has no support category)."""
        return {
            self.ru["Message-ID"]: ("imap:support", {"payments", "complaint"}, "ru", True),
            self.az_cyrl["Message-ID"]: ("imap:support", {"payments"}, "az", True),
            self.auto["Message-ID"]: ("imap:support", set(), "", False),
            f"wamid.E2E{self.run}": ("whatsapp", {"security", "account_access"}, "az", True),
            f"{TG_CHAT}:{TG_MESSAGE}": ("telegram", {"bonuses"}, "tr", True),
            self.chat["external_id"]: ("http:webchat", {"verification"}, "en", True),
        }


