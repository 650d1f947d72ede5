"""Email addresses: the one normalisation every comparison uses, validation, and masking for logs."""

from __future__ import annotations

import re
import unicodedata

# Pragmatic syntax check: one @, a non-empty local part without spaces, a dotted domain whose labels
# are letters/digits/hyphens (Unicode letters allowed: internationalised domains exist). It is not
# RFC 5322; Ownpage is the final judge and its rejections are reported as such.
_EMAIL = re.compile(
    r"^[^\s@\"(),:;<>\[\]\\]{1,64}@(?=.{1,253}$)(?:[^\W_](?:[\w-]{0,61}[^\W_])?\.)+(?:[^\W\d_]{2,63}|xn--[^\W_][\w-]{0,57})$"
)


def normalise_email(raw: str) -> str:
    """The canonical form of an address: trimmed, Unicode NFC, lower case (local part included).

    Lower-casing the local part is a deliberate choice: mailbox providers treat it case-insensitively
    in practice, and a publisher's database often holds the same reader in two spellings.
    """
    return unicodedata.normalize("NFC", raw.strip()).lower()


def is_valid_email(email: str) -> bool:
    """Whether an already normalised address is plausible enough to send to Ownpage."""
    return bool(_EMAIL.fullmatch(email)) and ".." not in email


def mask_email(value: object) -> str:
    """A form safe for logs, metrics and exception messages: `j***@e***.com`."""
    text = str(value).strip() if value is not None else ""
    if not text:
        return "<empty>"
    local, at, domain = text.rpartition("@")
    if not at:
        return f"{text[:1]}***"
    host, dot, tld = domain.rpartition(".")
    masked_domain = f"{host[:1]}***{dot}{tld}" if dot else f"{domain[:1]}***"
    return f"{local[:1]}***@{masked_domain}"
