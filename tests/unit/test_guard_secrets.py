"""The secrets scanner: provider key formats, JWTs, PEM blocks, secrets in context."""

from __future__ import annotations

import base64
import json

import pytest

from bastion.core.secrets import new_key
from bastion.guard.base import ScanContext, Scanner
from bastion.guard.secrets import SECRET_ENTITIES, SecretsScanner, shannon_entropy

CTX = ScanContext()
SCANNER = SecretsScanner()


def found(text: str) -> list[tuple[str, str]]:
    return [(f.entity, text[f.start : f.end]) for f in SCANNER.scan(text, CTX)]


def b64url(obj: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")


JWT = (
    b64url({"alg": "HS256", "typ": "JWT"})
    + "."
    + b64url({"sub": "1234567890", "name": "Ann"})
    + ".SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
)
OPENAI_PROJ = "sk-proj-" + "Ab3dE6gH9jK2mN5pQ8sT1vW4yZ7bC0eF3hJ6kL9nP2rS5uX8" + "_-aB"
OPENAI_LEGACY = "sk-" + "a1B2c3D4e5F6g7H8i9J0" + "T3BlbkFJ" + "k1L2m3N4o5P6q7R8s9T0"
ANTHROPIC = (
    "sk-ant-api03-"
    + "Zx9Yw8Vu7Ts6Rq5Po4Nm3Lk2Jh1Gf0EdCbA-_zyXWvutsrqPONMLKJIHgfedcba9876543210"
    + "AA"
)
GITHUB = "ghp_" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8"
GOOGLE = "AIza" + "SyA1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q"
PEM = (
    "-----BEGIN RSA PRIVATE KEY-----\n"
    "MIIEpAIBAAKCAQEA3Tz2mr7SZiAMfQyuvBjM9Oi\n"
    "Z1BjP5CE/Wm/Rr500P\n"
    "-----END RSA PRIVATE KEY-----"
)


def test_is_a_scanner() -> None:
    scanner: Scanner = SCANNER
    assert scanner.name == "secrets"
    assert SCANNER.scan("", CTX) == []
    f = SCANNER.scan(f"key {GITHUB}", CTX)[0]
    assert (f.scanner, f.category, f.entity, f.start, f.end) == (
        "secrets",
        "GITHUB_TOKEN",
        "GITHUB_TOKEN",
        4,
        4 + len(GITHUB),
    )


@pytest.mark.parametrize(
    ("entity", "value"),
    [
        ("OPENAI_KEY", OPENAI_PROJ),
        ("OPENAI_KEY", OPENAI_LEGACY),
        ("ANTHROPIC_KEY", ANTHROPIC),
        ("AWS_KEY", "AKIAIOSFODNN7EXAMPLE"),
        ("AWS_KEY", "ASIAY34FZKBOKMUTVV7A"),
        ("GITHUB_TOKEN", GITHUB),
        ("GITHUB_TOKEN", "gho_" + "Z9y8X7w6V5u4T3s2R1q0P9o8N7m6L5k4J3i2"),
        ("GITHUB_TOKEN", "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz0123456789"),
        ("SLACK_TOKEN", "xoxb-1234567890123-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx"),
        (
            "SLACK_TOKEN",
            "https://hooks.slack.com/services/T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX",
        ),
        ("GOOGLE_API_KEY", GOOGLE),
        ("STRIPE_KEY", "sk_live_" + "4eC39HqLyjWDarjtT1zdp7dc"),
        ("STRIPE_KEY", "rk_live_" + "51H8xYzAbCdEfGhIjKlMnOp"),
        ("JWT", JWT),
        ("PRIVATE_KEY", PEM),
    ],
)
def test_provider_formats(entity: str, value: str) -> None:
    text = f"Here it is: {value}\nthanks"
    assert found(text) == [(entity, value)]
    assert SCANNER.scan(text, CTX)[0].score >= 0.9


def test_bastion_key() -> None:
    key = new_key()
    assert found(f"use {key} for the gateway") == [("BASTION_KEY", key)]


def test_aws_secret_key_in_context() -> None:
    secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
    text = f"aws_access_key_id = AKIAIOSFODNN7EXAMPLE\naws_secret_access_key = {secret}\n"
    assert found(text) == [("AWS_KEY", "AKIAIOSFODNN7EXAMPLE"), ("AWS_KEY", secret)]
    assert found(f"checksum {secret}") == []  # the same 40 characters, no context


def test_truncated_pem_block_is_still_caught() -> None:
    text = "key:\n-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\nAAAABG5vbmU=\n"
    hits = SCANNER.scan(text, CTX)
    assert [h.entity for h in hits] == ["PRIVATE_KEY"]
    assert text[hits[0].start : hits[0].end].endswith("AAAABG5vbmU=")


def test_jwt_needs_an_alg_header() -> None:
    fake = b64url({"typ": "JWT"}) + "." + b64url({"sub": "1"}) + ".c2lnbmF0dXJl"
    assert found(f"token {fake}") == []
    assert found("eyJnotbase64atall!.abc.def") == []
    assert found(f"Authorization: Bearer {JWT}") == [("JWT", JWT)]


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("password=hunter2", "hunter2"),
        ('DB_PASSWORD="S3cr3t!pass"', "S3cr3t!pass"),
        (
            "secret: 9f86d081884c7d659a2feaf0c55ad015a3bf4f1b",
            "9f86d081884c7d659a2feaf0c55ad015a3bf4f1b",
        ),
        ('{"api_key": "Zm9vYmFyYmF6cXV4MTIzNDU2Nzg5"}', "Zm9vYmFyYmF6cXV4MTIzNDU2Nzg5"),
        ("clientSecret: 'q8Xr2LmN4pT7vW1zB5cD9fG3'", "q8Xr2LmN4pT7vW1zB5cD9fG3"),
        (
            "Authorization: Bearer 0f3c9a7b2e4d4c1a8b6e5f2d9c7a1b3e",
            "0f3c9a7b2e4d4c1a8b6e5f2d9c7a1b3e",
        ),
        ("my password is Tr0ub4dor&3", "Tr0ub4dor&3"),
        ("postgres://admin:Sup3rS3cret@db.internal:5432/app", "Sup3rS3cret"),
        ("curl 'https://x.io/v1?token=a8F3kL9mQ2xZ7pR4tV6wY1bN&x=1'", "a8F3kL9mQ2xZ7pR4tV6wY1bN"),
    ],
)
def test_secret_in_context(text: str, value: str) -> None:
    assert found(text) == [("SECRET", value)]


@pytest.mark.parametrize(
    "text",
    [
        "Fixed in commit 3f2a9c1b8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a last week.",  # a git SHA
        "Request id 550e8400-e29b-41d4-a716-446655440000 timed out.",  # a UUID
        "sha256 9f86d081884c7d659a2feaf0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
        "The password is required and must be rotated.",
        "Set max_tokens=256 and the tokenizer: bert-base-uncased.",
        "password: ******** (redacted)",
        "api_key=${OPENAI_API_KEY}",
        "token: <your-token-here>",
        "A risk-free sk-learn model; the author: Tolkien.",
        "sk-abc is too short; AKIA123 too; ghp_short; xoxb-1",
        "The secret to good bread is patience.",
        "Token count: 15000 tokens used.",
        'password = os.environ["DB_PASSWORD"]',  # code that reads a secret is not one
        "token = get_token(user)",
        "self.password = getpass.getpass()",
        "api_key = load_api_key_from_vault(cfg)",
    ],
)
def test_negatives(text: str) -> None:
    assert found(text) == []


def test_specific_format_wins_over_context() -> None:
    text = f"OPENAI_API_KEY={OPENAI_PROJ}"
    assert found(text) == [("OPENAI_KEY", OPENAI_PROJ)]


def test_entropy() -> None:
    assert shannon_entropy("") == 0.0
    assert shannon_entropy("aaaa") == 0.0
    assert shannon_entropy("abcd") == pytest.approx(2.0)


def test_entity_subset() -> None:
    only = SecretsScanner(entities=["JWT"])
    text = f"{GITHUB} {JWT} password=hunter2 {PEM}"
    assert [f.entity for f in only.scan(text, CTX)] == ["JWT"]
    assert {f.entity for f in SCANNER.scan(text, CTX)} == {
        "GITHUB_TOKEN",
        "JWT",
        "SECRET",
        "PRIVATE_KEY",
    }
    assert "OPENAI_KEY" in SECRET_ENTITIES
    with pytest.raises(ValueError, match="PASSWORD"):
        SecretsScanner(entities=["PASSWORD"])
