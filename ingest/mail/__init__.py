"""Email normalisation: raw RFC 5322 bytes → :class:`frontdesk.messages.InboundMessage`.

``parse_mail`` is what the IMAP connector and ``frontdesk parse-mail`` call; ``MailRejected``
carries the reason a mail goes to the dead-letter topic instead; ``to_parse_json`` is the
operator's JSON view of a parsed message.

Which parser, measured on the 365 parseable mails of ``tests/fixtures/mail/corpus.py``:

* mail-parser 4.8 (``parse_from_bytes``): 13 body texts wrong (10 mislabelled or unlabelled
  charsets, 3 broken boundaries), 5 subjects wrong (wrong or missing charsets), 2 exceptions
  (bad base64 padding); it also reads the text of attached messages as body text, re-encodes
  embedded messages (other hashes) and names unnamed attachments randomly, so a re-import differs;
* the stdlib with ``policy.default``: 16 texts and 5 subjects wrong, 3 exceptions (unknown
  charset labels, CR/LF in a display name), and about 2x slower than this package;
* so the tree comes from the stdlib ``compat32`` parser (the one mail-parser itself wraps), and
  charsets, RFC 2047/2231, addresses and HTML are decoded here (:mod:`.text`, :mod:`.flags`);
  mail-parser-reply splits quotes and signatures, with markers added for ru, tr and az
  (:mod:`.replies`).
"""

from ingest.mail.parse import MailLimits, MailRejected, parse_mail, to_parse_json

__all__ = ["MailLimits", "MailRejected", "parse_mail", "to_parse_json"]
