"""Email addresses: the one canonical key every comparison uses, a plausibility check, and masking.

An address has two forms here. Its *spelling* is what a system holds (Ownpage may keep `Ann@X.com`,
the source `  ann@x.COM`); its *key* is `canonical_key(spelling)`, the identity both sides are
compared on. Writes to an existing Ownpage row always use Ownpage's own spelling (Ownpage's matching
rules are unknown); only a new address is sent as its key.
"""

from __future__ import annotations

import unicodedata

# Beyond this, an address is not one (RFC 5321 allows 254 in a path); anything longer is refused.
MAX_LENGTH = 320
# Characters that canonical_key maps from non-ASCII to ASCII (GREEK QUESTION MARK -> ";", GREEK
# VARIA -> "`", KELVIN SIGN -> "k"). Look-ups that rely on a database's own lower() must treat
# these ASCII characters as "any character" (tests/unit/test_emails.py proves the list complete).
ASCII_FROM_NON_ASCII = frozenset(";`k")
# Format characters that render as nothing: soft hyphen, Mongolian vowel separator, zero-width space,
# non-joiner and joiner, direction marks, embeddings and isolates, word joiner and invisible
# operators, byte-order mark. A CSV import or a copy-paste leaves them in addresses, and an Ownpage
# that drops them would take `\ufeffann@x.com` for `ann@x.com`. canonical_key removes them anywhere:
# both spellings are then one address, and a suppression of either covers both (the cautious reading).
INVISIBLE = "\u00ad\u180e\u200b\u200c\u200d\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2060\u2061\u2062\u2063\u2064\u2066\u2067\u2068\u2069\ufeff"
_WITHOUT_INVISIBLE = dict.fromkeys(map(ord, INVISIBLE))
IDNA_PREFIX = "xn--"  # a domain label in IDNA (punycode), RFC 5890
_UNFIT = frozenset({"Cc", "Cf", "Cs", "Zs", "Zl", "Zp"})  # in no decoded IDNA label
_category = unicodedata.category


def canonical_key(spelling: str) -> str:
    """The identity of an address: trimmed, lower case (local part included), Unicode NFC, without
    invisible format characters (INVISIBLE), its domain's IDNA labels (`xn--caf-dma`) as the Unicode
    they encode (`café`).

    Idempotent by construction: lower-casing can undo a composition, so the steps are repeated until
    nothing moves (once for ASCII, at most twice in practice). Lower-casing the local part is a
    deliberate choice: mailbox providers treat it case-insensitively, and a publisher's database
    often holds one reader in two spellings. A domain in IDNA and in Unicode is one domain, which mail
    reaches alike: an Ownpage that keeps domains in IDNA (unknown, ownpage-api.md) must not make a
    reader it suppressed look new.
    """
    text = spelling.strip()
    if text.isascii():
        text = text.lower()
        if IDNA_PREFIX not in text:
            return text
        text = _unicode_domain(text)
        if text.isascii():
            return text
    # Decoding comes after the forms settle (NFC can make a label ASCII: `xn--a\u1fefb` is `xn--a`b`),
    # inside the loop, and a decoded label is taken only when it is settled itself: the key of a key is
    # the key.
    key = unicodedata.normalize("NFC", text.translate(_WITHOUT_INVISIBLE))
    while True:
        following = unicodedata.normalize("NFC", key.lower()).strip()
        if "--" in following and IDNA_PREFIX in following:
            following = _unicode_domain(following)
        if following == key:
            return key
        key = following


def _unicode_domain(address: str) -> str:
    """The address with each IDNA label of its domain decoded; a label that is not one (it does not
    decode, or not to non-ASCII text in NFC and lower case, without control, format, separator or
    surrogate characters, that encodes back to it: IDNA2008's U-labels) is kept as it is."""
    local, at, domain = address.rpartition("@")
    if not at or IDNA_PREFIX not in domain.lower():
        return address
    labels = domain.split(".")
    for number, label in enumerate(labels):
        encoded = label[4:].lower()
        if label[:4].lower() != IDNA_PREFIX or not encoded.isascii():
            continue
        try:
            decoded = encoded.encode("ascii").decode("punycode")
            if decoded.encode("punycode").decode("ascii") != encoded:
                continue
        except UnicodeError:
            continue
        if (
            not decoded.isascii()
            and unicodedata.normalize("NFC", decoded.lower()) == decoded  # a U-label is NFC, lower case
            and not _UNFIT.intersection(map(_category, decoded))
        ):
            labels[number] = decoded
    return f"{local}@{'.'.join(labels)}"


def idna_spelling(key: str) -> str | None:
    """The key with the non-ASCII labels of its domain in IDNA (`café` as `xn--caf-dma`), the
    spelling a database or Ownpage may hold for it; None when its domain is ASCII."""
    local, at, domain = key.rpartition("@")
    if not at or domain.isascii():
        return None
    try:
        labels = [
            label if label.isascii() else IDNA_PREFIX + label.encode("punycode").decode("ascii")
            for label in domain.split(".")
        ]
    except UnicodeError:
        return None
    return f"{local}@{'.'.join(labels)}"


def source_key(address: object) -> str:
    """The canonical key of an address as a source gives it: text, or a database's bytes read as
    UTF-8 (undecodable bytes escaped, so that two such addresses stay apart); "" for anything else.
    The one definition both of the planner's paths use, the bulk one (index.column_keys) and the
    general one (Planner.add_source_row)."""
    if isinstance(address, bytes | bytearray):
        address = bytes(address).decode("utf-8", "surrogateescape")
    return canonical_key(address) if isinstance(address, str) else ""


def is_plausible_email(key: str) -> bool:
    """Whether a canonical key is worth sending to Ownpage as a new address.

    Deliberately lenient: Ownpage is the judge (its refusals are reported per address), and a rule
    stricter than Ownpage's would leave readers out. Refused: no `@` (or a second one outside a quoted
    local part), an empty local part or domain, a domain without a dot after its first character
    (unless it is an IP literal in brackets), white space or control characters, and anything longer
    than an address can be.
    """
    if not key or len(key) > MAX_LENGTH:
        return False
    local, at, domain = key.rpartition("@")
    if not at or not local or not domain:
        return False
    if "@" in local and not (local.startswith('"') and local.endswith('"')):
        return False  # a second `@` outside a quoted local part
    if not (domain.startswith("[") and domain.endswith("]")) and "." not in domain[1:]:
        return False
    if key.isascii():
        return key.isprintable() and " " not in key
    return not any(ch.isspace() or unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Zl", "Zp") for ch in key)


def mask_email(value: object) -> str:
    """A form safe for logs, metrics and exception messages: `j***@e***.com` (a database's bytes read
    as UTF-8 text first)."""
    if isinstance(value, bytes | bytearray):
        value = bytes(value).decode("utf-8", "replace")
    text = str(value).strip() if value is not None else ""
    if not text:
        return "<empty>"
    local, at, domain = text.rpartition("@")
    if not at:
        return f"{_shown(text[:1])}***"
    host, dot, tld = domain.rpartition(".")
    masked_domain = f"{_shown(host[:1])}***{dot}{_shown(tld[:24])}" if dot else f"{_shown(domain[:1])}***"
    return f"{_shown(local[:1])}***@{masked_domain}"


def _shown(fragment: str) -> str:
    """What a mask keeps of an address, printable: a control character, a line break or a lone
    surrogate (which no log line can encode) shows as "?"."""
    return fragment if fragment.isprintable() else "".join(ch if ch.isprintable() else "?" for ch in fragment)


# Variation selectors (the emoji one after `❤`): IDNA's mapping drops them, they render as nothing.
_VARIATION_SELECTORS = dict.fromkeys([*range(0xFE00, 0xFE10), *range(0xE0100, 0xE01F0)])


def folded_key(key: str) -> str:
    """A canonical key as the loosest Ownpage may match it: full Unicode case folding (ß -> ss, ς ->
    σ, ſ -> s, ﬁ -> fi), compatibility forms (full-width and circled letters), variation selectors
    dropped, composed again. IDNA 2003's mapping of a domain does all of these."""
    if key.isascii():
        return key.lower()
    loose = unicodedata.normalize("NFKC", key.translate(_VARIATION_SELECTORS))
    return unicodedata.normalize("NFKC", loose.casefold())
