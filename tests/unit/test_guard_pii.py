"""The regex-and-checksum PII scanner: spans, validation and hard negatives."""

from __future__ import annotations

import itertools

import pytest

from bastion.guard.base import Finding, ScanContext, Scanner
from bastion.guard.pii import ENTITIES, PiiScanner, dedupe_overlaps, iban_valid, luhn_valid

CTX = ScanContext()
SCANNER = PiiScanner()


def found(text: str, scanner: PiiScanner = SCANNER) -> list[tuple[str, str]]:
    return [(f.entity, text[f.start : f.end]) for f in scanner.scan(text, CTX)]


def test_is_a_scanner() -> None:
    scanner: Scanner = SCANNER
    assert scanner.name == "pii"
    assert SCANNER.scan("", CTX) == []
    f = SCANNER.scan("write to ann@example.org", CTX)[0]
    assert (f.scanner, f.category, f.entity, f.start, f.end) == ("pii", "EMAIL", "EMAIL", 9, 24)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("Please email me at john.doe@example.com before Friday.", "john.doe@example.com"),
        ("Reply-To: <ann+news@mail.uni-heidelberg.de>", "ann+news@mail.uni-heidelberg.de"),
        ("user=K_Smith99@startup.io; role=admin", "K_Smith99@startup.io"),
        ("cc wei@company.co.jp.", "wei@company.co.jp"),
    ],
)
def test_email(text: str, value: str) -> None:
    assert found(text) == [("EMAIL", value)]


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("Call me at (415) 555-2671 tomorrow.", "(415) 555-2671"),
        ("Phone: +1-202-555-0143", "+1-202-555-0143"),
        ("Office: +44 20 7946 0958.", "+44 20 7946 0958"),
        ("London desk +44 (0)20 7946 0958", "+44 (0)20 7946 0958"),
        ("Ring 0044 20 7946 0958 if late", "0044 20 7946 0958"),
        ("Berlin: 030 12345678", "030 12345678"),
        ("Büro 030/1234567 bitte", "030/1234567"),
        ("Mobile +49 151 23456789", "+49 151 23456789"),
        ("Appelez le 01 23 45 67 89.", "01 23 45 67 89"),
        ("India: +91 98765 43210", "+91 98765 43210"),
        ("Sydney (02) 9374 4000", "(02) 9374 4000"),
        ("Mi número: +34 612 345 678", "+34 612 345 678"),
        ("call me on 4155552671", "4155552671"),
    ],
)
def test_phone(text: str, value: str) -> None:
    assert found(text) == [("PHONE", value)]


@pytest.mark.parametrize(
    "text",
    [
        "Order #4155552671 has shipped.",  # a bare ten-digit run with no phone keyword
        "Dial extension 4321 or room 12-34.",
        "The code is 123-456 and the PIN 1234.",
        "Meeting on 2024-03-15 at 10:30:45, or 15.03.2024, or 03/15/2024.",
        "It costs $1,299.99 or EUR 45.00.",
        "Upgrade to v2.14.3 before the release.",
        "Ship to ZIP 04405-9731 by Friday.",
        "The IBAN NL54 AECB 4824 6753 41 was rejected.",  # the tail of an invalid IBAN
    ],
)
def test_phone_negatives(text: str) -> None:
    assert found(text) == []


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("card 4111 1111 1111 1111 exp 09/27", "4111 1111 1111 1111"),
        ("pan=5555555555554444&amount=40.00", "5555555555554444"),
        ("Amex 3782-822463-10005 please", "3782-822463-10005"),
        ("Diners 3056 930902 5904.", "3056 930902 5904"),
        ("Discover 6011111111111117", "6011111111111117"),
        ("card: 4111111111111111 cvv 123", "4111111111111111"),
        ("card: 4111 1111 1111 1111 123", "4111 1111 1111 1111"),  # a CVV after the number
        ("card 4111111111111111 0927 123", "4111111111111111"),  # expiry and CVV
    ],
)
def test_credit_card(text: str, value: str) -> None:
    assert found(text) == [("CREDIT_CARD", value)]
    assert SCANNER.scan(text, CTX)[0].score == 1.0


@pytest.mark.parametrize(
    "text",
    [
        "card 4111 1111 1111 1112",  # fails Luhn
        "Reference 4532781234567891 is attached.",  # 16 digits, fails Luhn
        "number 1234 5678 9012 3452",  # passes Luhn, no issuer starts with 1
        "USPS tracking 9400 1000 0000 0000 0000 00",
        "Batch 1234 4111 1111 1111 1111 passed QA",  # a card carved out of a longer number
    ],
)
def test_credit_card_negatives(text: str) -> None:
    assert [e for e, _ in found(text) if e == "CREDIT_CARD"] == []


def test_two_cards_in_one_run() -> None:
    text = "4111 1111 1111 1111 5555 5555 5555 4444"
    assert found(text) == [("CREDIT_CARD", text[:19]), ("CREDIT_CARD", text[20:])]


def test_checksums() -> None:
    assert luhn_valid("4111111111111111") and not luhn_valid("4111111111111112")
    assert iban_valid("DE89370400440532013000") and not iban_valid("DE89370400440532013001")
    assert iban_valid("GB82WEST12345698765432")
    assert not iban_valid("DE8937040044053201300")  # one character short for Germany
    assert not iban_valid("XX89370400440532013000")  # no such country


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("IBAN DE89 3704 0044 0532 0130 00 ok", "DE89 3704 0044 0532 0130 00"),
        ("iban=DE89370400440532013000", "DE89370400440532013000"),
        ("Wire to GB82 WEST 1234 5698 7654 32 THEN call", "GB82 WEST 1234 5698 7654 32"),
        ("Refund to fr1420041010050500013m02606.", "fr1420041010050500013m02606"),
        ("Norway NO93 8601 1117 947, thanks", "NO93 8601 1117 947"),
    ],
)
def test_iban(text: str, value: str) -> None:
    assert found(text) == [("IBAN", value)]


@pytest.mark.parametrize(
    "text",
    [
        "The IBAN DE88 3704 0044 0532 0130 00 was rejected.",  # wrong check digits
        "DE89370400440532013001",  # wrong checksum
        "DE89 3704 0044 0532 0130 0012 34",  # runs on past the German length
        "ZZ89370400440532013000",
    ],
)
def test_iban_negatives(text: str) -> None:
    assert [e for e, _ in found(text) if e == "IBAN"] == []


@pytest.mark.parametrize(
    ("text", "value", "score"),
    [
        ("Applicant 123-45-6789 was approved.", "123-45-6789", 0.85),
        ("My SSN is 078-05-1120.", "078-05-1120", 0.9),
        ("SSN: 123 45 6789", "123 45 6789", 0.9),
        ("social security number 123456789", "123456789", 0.9),
    ],
)
def test_ssn(text: str, value: str, score: float) -> None:
    hits = SCANNER.scan(text, CTX)
    assert [(f.entity, text[f.start : f.end], f.score) for f in hits] == [("US_SSN", value, score)]


@pytest.mark.parametrize(
    "text",
    [
        "Record 000-12-3456 is a placeholder.",
        "Record 666-12-3456 is a placeholder.",
        "Record 912-34-5678 is a placeholder.",
        "Record 123-00-4567 is a placeholder.",
        "Record 123-45-0000 is a placeholder.",
        "Your order number is 123456789.",  # nine bare digits, no SSN keyword
        "ISBN 978-3-16-148410-0 is out of print.",
    ],
)
def test_ssn_negatives(text: str) -> None:
    assert found(text) == []


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("The request came from 192.168.1.1 at midnight.", "192.168.1.1"),
        ("ssh admin@10.0.0.254", "10.0.0.254"),
        ("client_ip=203.0.113.7 status=403", "203.0.113.7"),
        ("Block 2001:db8::ff00:42:8329 now", "2001:db8::ff00:42:8329"),
        ("link-local fe80::1%eth0 here", "fe80::1%eth0"),
        (
            "full 2001:0db8:0000:0000:0000:ff00:0042:8329.",
            "2001:0db8:0000:0000:0000:ff00:0042:8329",
        ),
    ],
)
def test_ip(text: str, value: str) -> None:
    assert found(text) == [("IP_ADDRESS", value)]


@pytest.mark.parametrize(
    "text",
    [
        "The value 256.300.1.1 is out of range.",
        "Running version 10.4.1.2 of the agent.",
        "Upgrade to v1.2.3.4 today",
        "Call std::vector::push_back at 10:30:45.",
        "MAC 00:1a:2b:3c:4d:5e and 1.2.3",
    ],
)
def test_ip_negatives(text: str) -> None:
    assert found(text) == []


def test_several_entities_in_order_without_overlaps() -> None:
    text = (
        "Hi, I'm at ann@example.org or +44 20 7946 0958; card 4111 1111 1111 1111, "
        "IBAN DE89 3704 0044 0532 0130 00, SSN 123-45-6789, from 198.51.100.23."
    )
    assert [e for e, _ in found(text)] == [
        "EMAIL",
        "PHONE",
        "CREDIT_CARD",
        "IBAN",
        "US_SSN",
        "IP_ADDRESS",
    ]
    hits = SCANNER.scan(text, CTX)
    assert all(a.end <= b.start for a, b in itertools.pairwise(hits))


def test_entity_subset_and_unknown_entity() -> None:
    only = PiiScanner(entities=["EMAIL"])
    assert found("ann@example.org 4111 1111 1111 1111", only) == [("EMAIL", "ann@example.org")]
    assert set(ENTITIES) >= {"EMAIL", "PHONE", "CREDIT_CARD", "IBAN", "US_SSN", "IP_ADDRESS"}
    with pytest.raises(ValueError, match="PASSPORT"):
        PiiScanner(entities=["PASSPORT"])


def test_dedupe_overlaps_keeps_strongest() -> None:
    weak = Finding("pii", "PHONE", 0.6, 0, 11, entity="PHONE")
    strong = Finding("pii", "US_SSN", 0.9, 0, 11, entity="US_SSN")
    later = Finding("pii", "EMAIL", 0.95, 20, 30, entity="EMAIL")
    assert dedupe_overlaps([weak, later, strong]) == [strong, later]


def test_prose_and_identifiers_are_clean() -> None:
    text = (
        "Fixed in commit 3f2a9c1b8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a; request id "
        "550e8400-e29b-41d4-a716-446655440000 timed out. Tracking 1Z999AA10123456784, "
        "invoice INV-2024-000123, ZIP 94103-1234, batch 1234 5678 9012 passed."
    )
    assert found(text) == []


def test_digit_count_fallback_without_phonenumbers(monkeypatch: pytest.MonkeyPatch) -> None:
    from bastion.guard import pii

    monkeypatch.setattr(pii, "_pn", None)
    scanner = PiiScanner(entities=["PHONE"])
    assert found("Office: +44 20 7946 0958.", scanner) == [("PHONE", "+44 20 7946 0958")]
    assert found("Call me at (415) 555-2671 tomorrow.", scanner) == [("PHONE", "(415) 555-2671")]
    assert found("Dial extension 4321 or room 12-34.", scanner) == []


def test_decoy_numbers_stay_cheap() -> None:
    text = " ".join(f"+44 20 7946 {n:04d}," for n in range(1000))  # 20,000 characters
    hits = PiiScanner(entities=["PHONE"], max_phone_checks=8).scan(text, CTX)
    assert len(hits) == 1000  # past the budget, digit counts still report every one
