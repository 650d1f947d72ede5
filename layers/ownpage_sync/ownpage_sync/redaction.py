"""Taking personal data and secrets out of text we did not write: Ownpage's error messages, database
errors, exception texts, log records of libraries. The project's one redaction helper.

Single values (an address in a report) are masked with emails.mask_email instead.
"""

from __future__ import annotations

import html
import logging
import re
from collections.abc import Iterable
from urllib.parse import unquote

from ownpage_sync.emails import canonical_key

ADDRESS = "<address>"
REDACTED = "<redacted>"
MAX_TEXT = 300

# An `@` however it is written: plain, URL-encoded (twice too: `%2540`), as an HTML entity (its `;`
# may be missing), as a JSON or Python escape (`\u0040`, `\U00000040`, `\x40`, their backslash
# doubled when the text was escaped again), full width or small.
_AT = r"(?:@|%(?:25)?40|&#0*64(?:;|(?![0-9]))|&#x0*40(?:;|(?![0-9a-f]))|&commat;|\\+u0040|\\+U00000040|\\+x40|＠|﹫)"
# A local part may hold `'`, `&`, `=`, `|`, `` ` ``, braces (O'Brien, tom&jerry) and, quoted, even
# white space ("john smith"@x.com): it runs back to white space, a slash or a list's punctuation, so a
# quote before it goes with it (more masked than needed, never less); a `key=` in front of it stays
# (_masked). A domain holds none of them.
_ADDRESS_LIKE = re.compile(
    rf"(?:\"[^\"\r\n]{{0,64}}\"|[^\s,;<>()\[\]/]*){_AT}[^\s,;<>()\[\]{{}}\"'`|/]*", re.IGNORECASE
)
_KEY = re.compile(r"[A-Za-z_][\w.-]*=")  # `email=` in front of an address-like text
_QUERY_SECRET = re.compile(r"(?i)\b(password|username|search|token|api_key)=[^&\s'\"]*")
_TOKEN_SEPARATORS = re.compile(r"[\s,;:<>()\[\]{}\"'`|]+")
_TOKEN = re.compile(r"[^\s,;:<>()\[\]{}\"'`|]+")


class Addresses:
    """The addresses of one request, to recognise them in a reply's text (even invalid ones without
    an `@`) and to take them out of it."""

    def __init__(self, spellings: Iterable[str] = ()):
        self._by_key: dict[str, str] = {}
        for spelling in spellings:
            self._by_key.setdefault(canonical_key(spelling), spelling)
        # Addresses that text splits into several tokens (mary.o'connor@x.com, "john smith"@x.com):
        # found as they were sent, whatever the case, before the text is split.
        awkward = sorted((s for s in self._by_key.values() if _TOKEN_SEPARATORS.search(s.strip())), key=len)
        self._awkward = (
            re.compile("|".join(re.escape(s.strip()) for s in reversed(awkward)), re.IGNORECASE) if awkward else None
        )

    def __len__(self) -> int:
        return len(self._by_key)

    def lookup(self, candidate: str) -> str | None:
        """The address as sent that `candidate` names, if any (also written with %40 or an entity)."""
        key = canonical_key(candidate)
        found = self._by_key.get(key) or self._by_key.get(key.rstrip("."))
        if found is None and ("%" in candidate or "&" in candidate):
            plain = canonical_key(html.unescape(unquote(candidate)))
            found = self._by_key.get(plain) or self._by_key.get(plain.rstrip("."))
        return found

    def find(self, text: str) -> list[str]:
        """Addresses of this request named in `text`, as sent, in order of appearance."""
        return list(dict.fromkeys(spelling for _, _, spelling in self._mentions(text)))

    def mask_tokens(self, text: str) -> str:
        if not self._by_key:
            return text
        pieces, last = [], 0
        for start, end, _ in self._mentions(text):
            pieces += [text[last:start], ADDRESS]
            last = end
        return "".join([*pieces, text[last:]])

    def _mentions(self, text: str) -> list[tuple[int, int, str]]:
        """(start, end, address as sent) of each mention of an address of this request, in order: the
        awkward ones as they were sent, then every token between separators that names one."""
        found: list[tuple[int, int, str]] = []
        if self._awkward is not None:
            for match in self._awkward.finditer(text):
                spelling = self._by_key.get(canonical_key(match.group()))
                if spelling is not None:
                    found.append((match.start(), match.end(), spelling))
        awkward = list(found)
        for token in _TOKEN.finditer(text):
            if any(token.start() < end and start < token.end() for start, end, _ in awkward):
                continue  # a piece of an awkward mention
            spelling = self.lookup(token.group())
            if spelling is not None:
                found.append((token.start(), token.end(), spelling))
        return sorted(found)


NO_ADDRESSES = Addresses()


def redact(
    text: str,
    secrets: Iterable[str | None] = (),
    addresses: Addresses = NO_ADDRESSES,
    limit: int | None = MAX_TEXT,
    one_line: bool = True,
) -> str:
    """`text` without known secrets, credential or search query values, this request's addresses and
    anything address-like; white space collapsed into one line (unless `one_line` is False), cut to
    `limit` characters."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, REDACTED)
    text = addresses.mask_tokens(text)
    text = _QUERY_SECRET.sub(lambda match: match.group(1) + "=" + REDACTED, text)
    text = _ADDRESS_LIKE.sub(_masked, text)
    if one_line:
        text = " ".join(text.split())
    if limit is not None and len(text) > limit:
        text = text[: limit - 1] + "…"
    return text


def _masked(match: re.Match[str]) -> str:
    key = _KEY.match(match.group())
    return (key.group() if key else "") + ADDRESS


class RedactingFilter(logging.Filter):
    """For loggers of libraries that may print a URL with a key or an address in it (urllib3 logs each
    request line at DEBUG): whoever turns DEBUG on must not dump them into the logs."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact(record.msg, limit=None)
        if isinstance(record.args, tuple):
            record.args = tuple(redact(arg, limit=None) if isinstance(arg, str) else arg for arg in record.args)
        return True


# Libraries whose DEBUG output carries request and response bodies (DynamoDB items, SQS bodies,
# Secrets Manager values): never below INFO, whatever LOG_LEVEL asks.
CHATTY_LIBRARIES = ("botocore", "boto3", "s3transfer", "urllib3", "aws_xray_sdk")


def protect_library_logs() -> None:
    """Cap the chatty libraries at INFO and redact what urllib3 logs (idempotent)."""
    for name in CHATTY_LIBRARIES:
        library = logging.getLogger(name)
        if library.getEffectiveLevel() < logging.INFO:
            library.setLevel(logging.INFO)
    connection_pool = logging.getLogger("urllib3.connectionpool")
    if not any(isinstance(existing, RedactingFilter) for existing in connection_pool.filters):
        connection_pool.addFilter(RedactingFilter())
