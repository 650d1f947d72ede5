"""Email addresses: the one canonical key, the plausibility check, and masking for logs."""

from __future__ import annotations

import sys
import unicodedata

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from ownpage_sync.emails import (
    ASCII_FROM_NON_ASCII,
    INVISIBLE,
    canonical_key,
    idna_spelling,
    is_plausible_email,
    mask_email,
    source_key,
)

pytestmark = pytest.mark.unit

# What a domain's label may hold (no control, format, separator or surrogate character, no dot).
LABEL_CHARACTERS = st.characters(
    codec="utf-8", exclude_categories=("Cc", "Cf", "Cs", "Zs", "Zl", "Zp"), exclude_characters=".@"
)


# --- the canonical key ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ("ann@example.com", "ann@example.com"),
        ("  Ann@Example.COM\t", "ann@example.com"),  # trimmed, lower case (local part included)
        ("\u00a0ann@example.com\n", "ann@example.com"),  # Unicode white space is trimmed too
        ("JOSE\u0301@EXA\u0308MPLE.ORG", "josé@exämple.org"),  # decomposed (NFD) becomes composed (NFC)
        ("Élodie@Bücher.de", "élodie@bücher.de"),
        ("ΔΟΚΙΜΉ@ΠΑΡΆΔΕΙΓΜΑ.GR", "δοκιμή@παράδειγμα.gr"),
        ("Straße@example.com", "straße@example.com"),  # lower(), not casefold(): ß stays ß
        ("first.LAST+Tag@example.com", "first.last+tag@example.com"),  # sub-addresses are kept as written
        ("\u212aate@example.com", "kate@example.com"),  # KELVIN SIGN: its key is plain ASCII
        ("\ufeffann@example.com", "ann@example.com"),  # a byte-order mark left by a CSV import
        ("an\u200bn@exam\u00adple.com\u200e", "ann@example.com"),  # zero-width space, soft hyphen, LRM
        ("\u2066zoë@example.org\u2069", "zoë@example.org"),  # an isolate around the address
        ("Ana@XN--CAF-DMA.fr", "ana@café.fr"),  # a domain in IDNA is the Unicode it encodes
        ("zoë@xn--exmple-cua.xn--bcher-kva.de", "zoë@exämple.bücher.de"),  # label by label
        ("ana@xn--caf\u200b-dma.fr", "ana@café.fr"),  # an invisible character inside the label
        ("ana@xn--bad.fr", "ana@xn--bad.fr"),  # not an IDNA label (it decodes to control characters): kept
        ("ana@xn--abc-.fr", "ana@xn--abc-.fr"),  # decodes to ASCII: not an IDNA label either
        ("x@xn--ate-xk1a.com", "x@xn--ate-xk1a.com"),  # decodes to a KELVIN SIGN: not NFC lower case, kept
        ("x@xn--a\u1fefb-9ja.fr", "x@a`×b.fr"),  # an IDNA label once NFC has made it ASCII
        ("xn--caf-dma@example.org", "xn--caf-dma@example.org"),  # a local part is not a domain
    ],
)
def test_canonical_key_trims_composes_and_lowers(raw: str, key: str) -> None:
    # Given a spelling of an address
    # When its key is taken
    # Then it is the identity every comparison uses
    assert canonical_key(raw) == key


@pytest.mark.parametrize(
    ("address", "key"),
    [
        (" Ann@Example.com", "ann@example.com"),
        (b" Ann@Example.com", "ann@example.com"),  # a database's bytes are UTF-8 text
        (bytearray("Zoë@Example.org".encode()), "zoë@example.org"),
        (b"ann\xff@example.com", "ann\udcff@example.com"),  # not UTF-8: escaped, kept apart from any text
        (b"  ", ""),
        (None, ""),  # not an address: no key (the row is reported, never matched)
        (42, ""),
    ],
)
def test_source_key_reads_text_and_a_databases_bytes(address: object, key: str) -> None:
    # Given an address column's value as a source returns it
    # When its key is taken
    # Then text and UTF-8 bytes give the canonical key, anything else none
    assert source_key(address) == key


@settings(max_examples=300, deadline=None)
@given(
    local=st.text(st.characters(codec="utf-8", exclude_characters="@"), min_size=1, max_size=8),
    labels=st.lists(st.text(LABEL_CHARACTERS, min_size=1, max_size=8), min_size=1, max_size=3),
)
def test_a_domain_in_idna_and_in_unicode_have_one_key(local: str, labels: list[str]) -> None:
    # Given an address's key whose domain is not ASCII
    key = canonical_key(f"{local}@{'.'.join([*labels, 'fr'])}")
    assume(key.count("@") == 1 and not key.rpartition("@")[2].isascii())
    # When its domain is spelled in IDNA, in any case
    spelled = idna_spelling(key)
    assert spelled is not None and spelled.rpartition("@")[2].isascii()
    # Then that spelling has the same key
    local_part, _, domain = spelled.rpartition("@")
    assert canonical_key(spelled) == canonical_key(f"{local_part}@{domain.upper()}") == key


@settings(max_examples=300, deadline=None)
@given(label=st.text(min_size=1, max_size=8), inserted=st.text(max_size=2))
def test_the_key_of_an_idna_spelling_is_stable(label: str, inserted: str) -> None:
    # Given a domain label in IDNA encoding any text, with any characters slipped into it
    try:
        encoded = label.encode("punycode").decode("ascii")
    except UnicodeError:
        assume(False)
        return
    half = len(encoded) // 2
    spelling = f"a@xn--{encoded[:half]}{inserted}{encoded[half:]}.fr"
    # When it is keyed / Then the key of the key is the key (found by an adversarial run:
    # `xn--a\u1fefb-9ja` became an IDNA label only once NFC had made it ASCII)
    once = canonical_key(spelling)
    assert canonical_key(once) == once
    assert canonical_key(spelling.upper()) == canonical_key(canonical_key(spelling.upper()))


def test_a_key_with_an_ascii_domain_has_no_idna_spelling() -> None:
    assert idna_spelling("ana@example.org") is None and idna_spelling("no-at-sign") is None
    assert idna_spelling("ana@café.fr") == "ana@xn--caf-dma.fr"


def test_nfc_and_nfd_spellings_have_the_same_key() -> None:
    # Given the same address in its two Unicode forms (they look identical, their bytes differ)
    composed = unicodedata.normalize("NFC", "zoë@exämple.org")
    decomposed = unicodedata.normalize("NFD", composed)
    assert composed != decomposed

    # When both are keyed
    # Then the keys are equal
    assert canonical_key(composed) == canonical_key(decomposed) == composed


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=40))
def test_the_key_is_idempotent_and_ignores_form_case_and_padding(text: str) -> None:
    # Given any text
    once = canonical_key(text)

    # When it is keyed again, or respelled in another Unicode form, padded or upper-cased first
    # Then the result does not move: an address read back from Ownpage matches the one we sent
    assert canonical_key(once) == once
    assert canonical_key(unicodedata.normalize("NFD", text)) == once
    assert canonical_key(f"  {text}\t") == canonical_key(text.strip())
    assert canonical_key(once.upper()) == canonical_key(once.upper().lower())
    assert unicodedata.is_normalized("NFC", once)


def test_every_single_character_key_is_stable() -> None:
    # Given every code point on its own and next to letters and a combining mark (the cases where
    # lower-casing can undo a composition)
    # When each is keyed twice
    # Then the second key equals the first
    unstable = [
        hex(code)
        for code in range(sys.maxunicode + 1)
        if not 0xD800 <= code <= 0xDFFF
        for text in (chr(code), "A" + chr(code) + "\u0301")
        if canonical_key(canonical_key(text)) != canonical_key(text)
    ]
    assert unstable == []


def test_the_non_ascii_characters_with_an_ascii_key_are_all_known() -> None:
    # Given every non-ASCII code point
    # When keyed alone
    # Then exactly the characters listed in ASCII_FROM_NON_ASCII come out as ASCII: the SQL look-up's
    # character map (sources/sql.py) relies on this list being complete
    ascii_keys = {
        canonical_key(chr(code))
        for code in range(0x80, sys.maxunicode + 1)
        if not 0xD800 <= code <= 0xDFFF and canonical_key(chr(code)).isascii() and canonical_key(chr(code))
    }
    assert ascii_keys == set(ASCII_FROM_NON_ASCII)


def test_every_invisible_character_is_removed_and_nothing_else_disappears() -> None:
    # Given every code point between two letters
    # When keyed
    # Then the ones that vanish are exactly emails.INVISIBLE (the SQL look-up deletes the same set)
    vanished = {
        chr(code)
        for code in range(0x80, sys.maxunicode + 1)
        if not 0xD800 <= code <= 0xDFFF and canonical_key(f"a{chr(code)}b") == "ab"
    }
    assert vanished == set(INVISIBLE)


# --- plausibility ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "email",
    [
        "ann@example.com",
        "a@b.co",
        "first.last+tag@sub.example.co.uk",
        "o'brien@example.ie",
        "a_b-c~1@x-y.example.net",
        "josé@exämple.org",  # non-ASCII local part and domain
        "δοκιμή@παράδειγμα.gr",
        "ñandú@例え.jp",
        "x@xn--bcher-kva.ch",  # an A-label domain
        "x@123.example",
        # Refused by our earlier, stricter rule while an Ownpage list may hold them: Ownpage judges.
        "a" * 65 + "@example.com",  # a local part over 64 characters
        "ann..smith@example.com",  # two dots in a row
        "trailing@dot.example.com.",  # a trailing dot
        "ann@[192.0.2.1]",  # an IP literal
        "ann@example.c",  # a one-letter top-level domain
        '"ann@home"@example.com',  # a quoted local part may hold an @
    ],
)
def test_plausible_addresses_may_be_sent(email: str) -> None:
    # Given a key that could be a deliverable address
    # When it is checked
    # Then it may be sent to Ownpage as a new subscriber (Ownpage is the judge)
    assert is_plausible_email(email)


@pytest.mark.parametrize(
    "email",
    [
        "",
        "ann",
        "ann@",  # Ownpage's own example of a 400: "email is not valid user1@"
        "@example.com",
        "ann@example",  # no dot in the domain
        "ann@.com",  # nothing before the domain's dot
        "ann@@example.com",
        "ann@b@example.com",
        "an n@example.com",
        "ann@exa mple.com",
        "ann\t@example.com",
        "ann\u200b@example.com",  # a zero-width space
        "ann\x00@example.com",
        "ann\udcff@example.com",  # a lone surrogate (undecodable bytes from a database)
        "a" * 310 + "@example.com",  # longer than an address can be
    ],
)
def test_implausible_addresses_are_never_sent(email: str) -> None:
    # Given a key that cannot be an address
    # When it is checked
    # Then it is refused before it reaches Ownpage as a new subscriber
    assert not is_plausible_email(email)


# --- masking ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "masked"),
    [
        ("ann.smith@example.com", "a***@e***.com"),
        ("ann@mail.example.co.uk", "a***@m***.uk"),
        ("  Ann@Example.com ", "A***@E***.com"),
        ("josé@exämple.org", "j***@e***.org"),
        ("user1@", "u***@***"),
        ("ann@localhost", "a***@l***"),
        ("not-an-address", "n***"),
        ("", "<empty>"),
        (None, "<empty>"),
        (42, "4***"),
        ("\ud800gone@example.org", "?***@e***.org"),  # a lone surrogate (Ownpage's JSON may hold one)
        ("\x07ann@\x1bexample.o\u2028rg", "?***@?***.o?rg"),  # nothing a log line would break on
        (b"  Ann@Example.com", "A***@E***.com"),  # a database's bytes, read as text
        (b"   ", "<empty>"),
    ],
)
def test_mask_email_keeps_only_first_letters_and_the_top_level_domain(value: object, masked: str) -> None:
    # Given an address (or anything a source column could hold)
    # When it is masked for a log line, a metric or an exception message
    # Then only the first letter of the local part and of the domain, and the top-level domain, remain
    assert mask_email(value) == masked


local_parts = st.text(
    st.characters(blacklist_categories=("Cs", "Zs", "Zl", "Zp", "Cc"), blacklist_characters="@.*"),
    min_size=1,
    max_size=20,
)
labels = st.text(st.characters(whitelist_categories=("Ll", "Lu", "Nd")), min_size=1, max_size=15)


@settings(max_examples=300, deadline=None)
@given(local=local_parts, host=labels, tld=st.sampled_from(("com", "org", "de", "co.uk")))
def test_a_mask_never_reveals_the_local_part_or_the_domain_name(local: str, host: str, tld: str) -> None:
    # Given any address
    email = f"{local}@{host}.{tld}"

    # When it is masked
    masked = mask_email(email)

    # Then the mask depends only on the first character of the local part and of the domain, and on
    # the top-level domain: neither the rest of either part nor their lengths can be read from it
    assert masked == mask_email(f"{local[0]}zzzzzzzz@{host[0]}zzzzzzzz.{tld}")
    assert len(masked) <= len(local[0]) + len(host[0]) + len(tld) + len("***@***.")
    shown_local, _, shown_domain = masked.partition("@")
    if len(local) > 1:
        assert local not in shown_local
    if len(host) > 1:
        assert host not in shown_domain
