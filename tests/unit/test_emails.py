"""Email addresses: the one normalisation, the validity check, and masking for logs."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ownpage_sync.emails import is_valid_email, mask_email, normalise_email

pytestmark = pytest.mark.unit


# --- normalisation ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        ("ann@example.com", "ann@example.com"),
        ("  Ann@Example.COM\t", "ann@example.com"),  # trimmed, lower case (local part included)
        ("\u00a0ann@example.com\n", "ann@example.com"),  # Unicode white space is trimmed too
        ("JOSE\u0301@EXA\u0308MPLE.ORG", "josé@exämple.org"),  # decomposed (NFD) becomes composed (NFC)
        ("Élodie@Bücher.de", "élodie@bücher.de"),
        ("ΔΟΚΙΜΉ@ΠΑΡΆΔΕΙΓΜΑ.GR", "δοκιμή@παράδειγμα.gr"),
        ("Straße@example.com", "straße@example.com"),  # lower(), not casefold(): ß stays ß
        ("first.LAST+Tag@example.com", "first.last+tag@example.com"),  # sub-addresses are kept as written
    ],
)
def test_normalise_email_trims_composes_and_lowers(raw: str, normalised: str) -> None:
    # Given a spelling of an address
    # When it is normalised
    # Then it is the canonical form every comparison uses
    assert normalise_email(raw) == normalised


def test_nfc_and_nfd_spellings_normalise_to_the_same_address() -> None:
    # Given the same address in its two Unicode forms (they look identical, their bytes differ)
    composed = unicodedata.normalize("NFC", "zoë@exämple.org")
    decomposed = unicodedata.normalize("NFD", composed)
    assert composed != decomposed

    # When both are normalised
    # Then they are equal
    assert normalise_email(composed) == normalise_email(decomposed) == composed


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40))
def test_normalisation_is_idempotent_and_ignores_form_case_and_padding(text: str) -> None:
    # Given any text
    once = normalise_email(text)

    # When it is normalised again, or respelled in another Unicode form, padded or upper-cased first
    # Then the result does not move: an address read back from Ownpage matches the one we sent
    assert normalise_email(once) == once
    assert normalise_email(unicodedata.normalize("NFD", text)) == once
    assert normalise_email(f"  {text}\t") == normalise_email(text.strip())
    assert unicodedata.is_normalized("NFC", once)


# --- validation ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "email",
    [
        "ann@example.com",
        "a@b.co",
        "first.last+tag@sub.example.co.uk",
        "o'brien@example.ie",
        "a_b-c~1@x-y.example.net",
        "1234@example.net",
        "josé@exämple.org",  # non-ASCII local part and domain
        "δοκιμή@παράδειγμα.gr",
        "ñandú@例え.jp",
        "x@xn--bcher-kva.ch",  # an A-label domain
        "x@example.xn--p1ai",  # an A-label top-level domain
        "x@123.example",
    ],
)
def test_plausible_addresses_are_valid(email: str) -> None:
    # Given a normalised, plausible address
    # When it is checked
    # Then it may be sent to Ownpage
    assert is_valid_email(email)


@pytest.mark.parametrize(
    "email",
    [
        "",
        "ann",
        "ann@",  # Ownpage's own example of a 400: "email is not valid user1@"
        "@example.com",
        "ann@example",  # no dot in the domain
        "ann@localhost",
        "ann@@example.com",
        "ann@b@example.com",
        "an n@example.com",
        "ann@exa mple.com",
        "a..b@example.com",
        "ann@example..com",
        "ann@.example.com",
        "ann@example.com.",
        "ann@-example.com",
        "ann@example-.com",
        "ann@example.c",  # one-letter top-level domain
        "ann@example.123",  # numeric top-level domain
        'an"n@example.com',
        "an(n)@example.com",
        "an,n@example.com",
        "ann;bob@example.com",
        "<ann@example.com>",
        "a" * 65 + "@example.com",  # local part over 64
        "ann@" + "a" * 64 + ".com",  # label over 63
        "ann@" + ("a" * 60 + ".") * 5 + "com",  # domain over 253
    ],
)
def test_implausible_addresses_are_invalid(email: str) -> None:
    # Given a normalised address that cannot be delivered to
    # When it is checked
    # Then it is refused before it reaches Ownpage
    assert not is_valid_email(email)


def test_the_length_limits_are_inclusive() -> None:
    # Given a local part of exactly 64 characters and a label of exactly 63
    # When checked
    # Then both are accepted
    assert is_valid_email("a" * 64 + "@example.com")
    assert is_valid_email("ann@" + "a" * 63 + ".com")


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
