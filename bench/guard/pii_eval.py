"""Precision, recall and latency of the PII and secrets scanners on synthetic data.

Usage (from the repository root)::

    .venv/bin/python bench/guard/pii_eval.py [--seed 7] [--per-entity 400] [--negatives 400]

Generates a seeded, reproducible labelled set: ``--per-entity`` sentences for
each PII entity (varied templates, realistic values in several national
formats) and ``--negatives`` hard-negative sentences (order numbers, dates,
prices, versions, tracking ids, 16-digit non-Luhn numbers, IBANs with a wrong
checksum, invalid SSNs, too-short phone-like numbers, git SHAs, UUIDs).

Scoring is span-level: a finding is a true positive when it overlaps a gold
span of the same entity; a gold span is recalled when some finding of its
entity overlaps it. Latency is per ``scan()`` call on one core, p50/p95 over
many texts of 200, 2,000 and 20,000 characters, for two corpora: ``dense``
(every sentence carries PII or a hard negative) and ``prose`` (about one
sentence in twenty does). Prints a table and writes JSON to
``bench/results/pii-eval-<timestamp>.json``.
"""

from __future__ import annotations

import argparse
import ipaddress
import itertools
import json
import platform
import random
import re
import statistics
import string
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "src"))

from bastion.guard.base import Finding, ScanContext  # noqa: E402
from bastion.guard.pii import ENTITIES, PiiScanner, luhn_valid  # noqa: E402
from bastion.guard.secrets import SecretsScanner  # noqa: E402

RESULTS = REPO / "bench" / "results"
SIZES = (200, 2_000, 20_000)
CTX = ScanContext()

# -- synthetic data ------------------------------------------------------------
# Templates use <d4> (4 random digits), <d6-10> (6 to 10), <h40> (hex), <X4>
# (upper-case alphanumerics), <n1-12:2> (a number in 1..12, zero-padded to 2),
# <a|b|c> (one of), <@name> (a value from MAKE[name]) and {ENTITY} (a gold span).

FIRST = re.findall(r"\w+", "james mary robert linda michael sarah david emma wei yuki aisha carlos")
LAST = re.findall(r"\w+", "smith johnson garcia muller rossi kowalski tanaka chen patel nguyen")
DOMAINS = re.findall(
    r"\S+",
    "gmail.com outlook.com yahoo.co.uk example.org acme-corp.com mail.uni-heidelberg.de "
    "proton.me startup.io support.shop.fr web.de company.co.jp health-services.net",
)
US = "<201|212|213|305|312|404|415|503|512|617|646|702|718|773|818|917|972>"
EXCH = "<n201-989>"
PHONE_FORMATS = [
    *(f.replace("A", US).replace("E", EXCH) for f in ("(A) E-<d4>", "A-E-<d4>", "A.E.<d4>")),
    *(f.replace("A", US).replace("E", EXCH) for f in ("+1 A E <d4>", "+1-A-E-<d4>", "1-A-E-<d4>")),
    *(f.replace("A", US).replace("E", EXCH) for f in ("+1AE<d4>", "AE<d4>", "+1 (A) E-<d4>")),
    "020 7<d3> <d4>", "+44 20 7<d3> <d4>", "+44 (0)20 7<d3> <d4>", "0044 20 7<d3> <d4>",
    "0161 <n2-9><d2> <d4>", "07<n4-9><d2> <d6>", "+44 7<n4-9><d2> <d6>",
    "030 <n2-9><d7>", "+49 30 <n2-9><d7>", "030/<n2-9><d6>", "089 <n2-9><d6>",
    "+49 (0)89 <n2-9><d6>", "015<1|2|7><d1> <d7>", "+49 17<d1> <d7>", "0170-<d7>",
    "0<1|2|3|4|5|6|7|9> <d2> <d2> <d2> <d2>", "0<6|7>.<d2>.<d2>.<d2>.<d2>", "0<1|6><d8>",
    "+33 <1|6|7> <d2> <d2> <d2> <d2>", "+33 (0)<1|6> <d2> <d2> <d2> <d2>",
    "+91 <n7-9><d4> <d5>", "+91-<n7-9><d9>", "0<n7-9><d4> <d5>", "<n7-9><d4> <d5>",
    "+61 2 9<d3> <d4>", "(02) 9<d3> <d4>", "04<d2> <d3> <d3>", "+61 4<d2> <d3> <d3>",
    "+34 6<d2> <d3> <d3>", "6<d2> <d3> <d3>", "+346<d8>",
]  # fmt: skip
CARD_PREFIXES = "4:16 51:16 55:16 2221:16 34:15 37:15 6011:16 65:16 3530:16 36:14 4:19 62:16"
IBAN_BBAN = dict(  # country -> BBAN layout (A = upper-case letter, 9 = digit)
    re.findall(
        r"(\w\w):(\w+)",
        "DE:999999999999999999 GB:AAAA99999999999999 FR:99999999999999999999999 "
        "ES:99999999999999999999 IT:A9999999999999999999999 NL:AAAA9999999999 BE:999999999999 "
        "CH:99999999999999999 AT:9999999999999999 PL:999999999999999999999999 "
        "SE:99999999999999999999 IE:AAAA99999999999999 PT:999999999999999999999 NO:99999999999",
    )
)
PROSE = [
    "Thanks for getting back to me so quickly about the deployment.",
    "The quarterly report shows revenue grew by twelve percent year over year.",
    "Can you summarise the attached document in three bullet points?",
    "We migrated the billing service to the new cluster last weekend.",
    "Please rewrite this paragraph in a more formal tone for the board.",
    "The meeting has been moved to Thursday afternoon because of the holiday.",
    "Our onboarding checklist covers laptops, accounts and a buddy for the first week.",
    "I think the latency regression came from the new serialization layer.",
    "Translate the following customer feedback into German and French.",
    "The warehouse in Rotterdam handles most of our European shipments.",
    "Write a short poem about autumn leaves and the smell of rain.",
    "Explain the difference between a mutex and a semaphore with an example.",
    "The customer says the app crashes when they rotate the screen.",
    "Draft a polite reminder that the invoice is now two weeks overdue.",
    "We need to decide between PostgreSQL and SQLite for the edge devices.",
    "Her flight lands at noon, so the workshop will start after lunch.",
]
TEMPLATES = {
    "EMAIL": [
        "Please email me at {EMAIL} before Friday.", "Contact: {EMAIL}", "cc {EMAIL} on the thread",
        "My address is {EMAIL}, thanks!", "Reply-To: <{EMAIL}>", "send the invoice to {EMAIL}.",
        "{EMAIL} reported the outage at 9am.", "user={EMAIL}; role=admin", "(backup: {EMAIL})",
        "Can you forward this to {EMAIL} and the team?",
    ],
    "PHONE": [
        "Call me at {PHONE} tomorrow.", "Phone: {PHONE}",
        "You can reach the front desk on {PHONE}.",
        "My number is {PHONE}, text anytime.", "Tel. {PHONE} (office hours only)",
        "{PHONE} is my mobile.", "Ring {PHONE} if the courier is late.",
        "For support dial {PHONE}.",
        "Contact the landlord - {PHONE} - about the keys.", "I'm at {PHONE} after 5pm.",
        "whatsapp {PHONE}",
    ],
    "CREDIT_CARD": [
        "My card number is {CREDIT_CARD}, expiry 09/27.", "Charge it to {CREDIT_CARD} please.",
        "card: {CREDIT_CARD} cvv 123", "I paid with {CREDIT_CARD} yesterday.",
        "The Visa ending... actually the full number is {CREDIT_CARD}.",
        "{CREDIT_CARD} was declined.", "Update billing to {CREDIT_CARD}.",
        "pan={CREDIT_CARD}&amount=40.00",
    ],
    "IBAN": [
        "Please transfer the deposit to {IBAN}.", "IBAN: {IBAN}",
        "Refund to {IBAN}, reference 4471.",
        "My bank account is {IBAN} (Sparkasse).", "{IBAN} is the company account.", "iban={IBAN}",
        "Wire the money to IBAN {IBAN} by Monday.",
    ],
    "US_SSN": [
        "My SSN is {US_SSN}.", "Social security number: {US_SSN}",
        "Applicant {US_SSN} was approved.",
        "Please verify {US_SSN} against the file.", "{US_SSN} is the number on the card.",
        "ssn={US_SSN}&state=CA", "The W-2 lists {US_SSN} for the employee.",
    ],
    "US_SSN_CONTEXT": [  # for the space-separated and bare forms
        "SSN: {US_SSN}", "her social security number is {US_SSN}",
        "Taxpayer ID (SSN) {US_SSN} on line 2.",
    ],
    "IP_ADDRESS": [
        "The request came from {IP_ADDRESS} at midnight.", "Block {IP_ADDRESS} in the firewall.",
        "ssh admin@{IP_ADDRESS}", "client_ip={IP_ADDRESS} status=403",
        "Server address: {IP_ADDRESS}.", "Login from {IP_ADDRESS} looks suspicious.",
    ],
}  # fmt: skip
NEGATIVES = [
    "Order #<d6-10> has shipped.", "Your order number is <d9>; keep it for returns.",
    "The contract runs from <n2019-2026>-<n1-12:2>-<n1-28:2> to <n1-28:2>.<n1-12:2>.<n2025-2030>.",
    "Meeting on <n1-12:2>/<n1-28:2>/<n2020-2026> at <n0-23:2>:<n0-59:2>:<n0-59:2>.",
    "The total was $<n1-99>,<d3>.<d2> including tax.",
    "It costs EUR <n1-9999>.<d2> or <n1-999> <d3> JPY.",
    "Upgrade to v<n0-20>.<n0-40>.<n0-99> before the release.",
    "Running version <n1-12>.<n0-9>.<n0-20>.<n0-999> of the agent.",
    "Tracking: 1Z<X16>", "USPS tracking <d4> <d4> <d4> <d4> <d4> <d2>",
    "Card <@nonluhn> failed validation, please retype it.",
    "Reference <@nonluhn_bare> is attached.",
    "The IBAN <@bad_iban> was rejected by the bank.", "Record id <@bad_ssn> is a placeholder.",
    "Dial extension <n100-9999> or room <n1-99>-<n1-99>.",
    "The code is <d3>-<d3> and the PIN <d4>.",
    "Call box <d2> <d2> <d2> is by the gate.", "Fixed in commit <h40> last week.",
    "Request id <@uuid> timed out.", "ISBN 978-<d1>-<d2>-<d6>-<d1> is out of print.",
    "Ship to ZIP <d5>-<d4>, invoice INV-<n2019-2026>-<d6>.",
    "The value <n256-999>.<n0-999>.<n0-9>.<n0-9> is out of range.",
    "Population grew to <n1-9> <d3> <d3> in <n1990-2024>.",
    "Serial SN <X4>-<X4>-<X4>, MAC <h2>:<h2>:<h2>:<h2>:<h2>:<h2>.",
    "Batch <n1000-9999> <n1000-9999> <n1000-9999> passed QA.",
]  # fmt: skip
_TOKEN = re.compile(r"<(?:([dhXn])(\d+)(?:-(\d+))?(?::(\d+))?|@(\w+)|([^<>@]*\|[^<>]*))>")
_ALPHABETS = {
    "d": string.digits,
    "h": "0123456789abcdef",
    "X": string.ascii_uppercase + "0123456789",
}


@dataclass(frozen=True)
class Sample:
    text: str
    spans: list[tuple[str, int, int]] = field(default_factory=list)


def expand(rng: random.Random, template: str) -> str:
    """Fill the ``<...>`` tokens of a template (see the comment above)."""

    def one(m: re.Match[str]) -> str:
        kind, lo, hi, width, name, choice = m.groups()
        if choice:
            return rng.choice(choice.split("|"))
        if name:
            return MAKE[name](rng)
        n = rng.randint(int(lo), int(hi or lo))
        if kind == "n":
            return f"{n:0{width or 1}d}"
        return "".join(rng.choice(_ALPHABETS[kind]) for _ in range(n))

    return _TOKEN.sub(one, template)


def fill(template: str, entity: str, value: str) -> Sample:
    before, _, after = template.partition("{" + entity + "}")
    return Sample(before + value + after, [(entity, len(before), len(before) + len(value))])


def luhn_complete(partial: str) -> str:
    return next(partial + d for d in string.digits if luhn_valid(partial + d))


def email(rng: random.Random) -> str:
    f, last = rng.choice(FIRST), rng.choice(LAST)
    local = rng.choice(
        [f"{f}.{last}", f"{f[0]}{last}", f"{f}_{last}{rng.randint(1, 99)}", f"{f}+news", f]
    )
    return f"{local.capitalize() if rng.random() < 0.2 else local}@{rng.choice(DOMAINS)}"


def card(rng: random.Random) -> str:
    prefix, n = rng.choice([p.split(":") for p in CARD_PREFIXES.split()])
    num = luhn_complete(prefix + expand(rng, f"<d{int(n) - len(prefix) - 1}>"))
    cuts = (0, 4, 10, len(num)) if len(num) in (14, 15) else range(0, len(num) + 4, 4)
    groups = [num[a:b] for a, b in itertools.pairwise(cuts) if num[a:b]]
    return rng.choice([" ", "-", ""]).join(groups)


def iban(rng: random.Random, valid: bool = True) -> str:
    cc, layout = rng.choice(list(IBAN_BBAN.items()))
    bban = expand(rng, layout.replace("A", "<X|Y|Z|A|B|C|W|E|S|T>").replace("9", "<d1>"))
    check = 98 - int("".join(str(int(ch, 36)) for ch in bban + cc + "00")) % 97
    if not valid:
        check = (check + rng.randint(1, 96)) % 97 or 2
    compact = f"{cc}{check:02d}{bban}"
    spaced = " ".join(compact[i : i + 4] for i in range(0, len(compact), 4))
    return compact if rng.random() < 0.4 else spaced


def ssn_sample(rng: random.Random) -> Sample:
    a = rng.choice([x for x in range(1, 900) if x != 666])
    g, s = rng.randint(1, 99), rng.randint(1, 9999)
    style = rng.random()
    if style < 0.7:
        return fill(rng.choice(TEMPLATES["US_SSN"]), "US_SSN", f"{a:03d}-{g:02d}-{s:04d}")
    sep = " " if style < 0.85 else ""
    value = f"{a:03d}{sep}{g:02d}{sep}{s:04d}"
    return fill(rng.choice(TEMPLATES["US_SSN_CONTEXT"]), "US_SSN", value)


def ip(rng: random.Random) -> str:
    if rng.random() < 0.65:
        return ".".join(
            str(rng.choice([rng.randint(1, 255), rng.randint(0, 99)])) for _ in range(4)
        )
    addr = ipaddress.IPv6Address(rng.getrandbits(128) & ~((1 << rng.choice([0, 32, 64])) - 1))
    link_local = f"fe80::{rng.getrandbits(16):x}:{rng.getrandbits(16):x}"
    return rng.choice([addr.compressed, addr.exploded, link_local])


def non_luhn(rng: random.Random) -> str:
    num = rng.choice("3456") + expand(rng, "<d15>")
    if luhn_valid(num):  # one more on the last digit always breaks the checksum
        num = num[:-1] + str((int(num[-1]) + 1) % 10)
    return rng.choice([" ", "-", ""]).join(num[i : i + 4] for i in range(0, 16, 4))


def bad_ssn(rng: random.Random) -> str:
    return expand(rng, rng.choice(["000-<d2>-<d4>", "666-<d2>-<d4>", "9<d2>-<d2>-<d4>",
                                   "<n100-665>-00-<d4>", "<n100-665>-<n10-99>-0000"]))  # fmt: skip


MAKE: dict[str, Callable[[random.Random], str]] = {
    "nonluhn": non_luhn,
    "nonluhn_bare": lambda r: non_luhn(r).replace(" ", "").replace("-", ""),
    "bad_iban": lambda r: iban(r, valid=False),
    "bad_ssn": bad_ssn,
    "uuid": lambda r: str(uuid.UUID(int=r.getrandbits(128))),
}
VALUES: dict[str, Callable[[random.Random], str]] = {
    "EMAIL": email,
    "PHONE": lambda r: expand(r, r.choice(PHONE_FORMATS)),
    "CREDIT_CARD": card,
    "IBAN": iban,
    "IP_ADDRESS": ip,
}


def build(seed: int, per_entity: int, negatives: int) -> list[Sample]:
    """The labelled set: ``per_entity`` sentences per entity, then the hard negatives."""
    rng = random.Random(seed)
    samples: list[Sample] = []
    for entity in ENTITIES:
        for _ in range(per_entity):
            if entity == "US_SSN":
                samples.append(ssn_sample(rng))
            else:
                samples.append(fill(rng.choice(TEMPLATES[entity]), entity, VALUES[entity](rng)))
    samples += [Sample(expand(rng, NEGATIVES[i % len(NEGATIVES)])) for i in range(negatives)]
    return samples


def score(samples: list[Sample], scan: Callable[[str], list[Finding]]) -> dict[str, Any]:
    per: dict[str, dict[str, int]] = {
        e: {"gold": 0, "recalled": 0, "found": 0, "tp": 0} for e in ENTITIES
    }
    misses: dict[str, list[str]] = {e: [] for e in ENTITIES}
    false: dict[str, list[str]] = {e: [] for e in ENTITIES}
    for s in samples:
        found = scan(s.text)
        for ent, a, b in s.spans:
            per[ent]["gold"] += 1
            if any(f.entity == ent and f.start < b and f.end > a for f in found):
                per[ent]["recalled"] += 1
            elif len(misses[ent]) < 5:
                misses[ent].append(s.text)
        for f in found:
            if f.entity not in per:
                continue
            per[f.entity]["found"] += 1
            if any(ent == f.entity and f.start < b and f.end > a for ent, a, b in s.spans):
                per[f.entity]["tp"] += 1
            elif len(false[f.entity]) < 5:
                false[f.entity].append(f"{s.text!r} -> {s.text[f.start : f.end]!r}")
    out: dict[str, Any] = {}
    for ent, c in per.items():
        precision = c["tp"] / c["found"] if c["found"] else 1.0
        recall = c["recalled"] / c["gold"] if c["gold"] else 1.0
        out[ent] = {
            **c,
            "precision": round(precision, 4),
            "recall": round(recall, 4),
            "example_misses": misses[ent],
            "example_false_positives": false[ent],
        }
    return out


def corpus_texts(rng: random.Random, pool: list[str], size: int, n: int) -> list[str]:
    texts = []
    for _ in range(n):
        parts: list[str] = []
        length = 0
        while length < size:
            parts.append(rng.choice(pool))
            length += len(parts[-1]) + 1
        texts.append(" ".join(parts)[:size])
    return texts


def latency(
    samples: list[Sample], seed: int, scanners: dict[str, Callable[[str], list[Finding]]]
) -> dict[str, Any]:
    rng = random.Random(seed + 1)
    dense = [s.text for s in samples]
    prose = PROSE * 19 + dense[:: max(1, len(dense) // len(PROSE))]
    out: dict[str, Any] = {}
    for corpus, pool in (("dense", dense), ("prose", prose)):
        for size in SIZES:
            n_texts = {200: 400, 2_000: 200, 20_000: 40}[size]
            texts = corpus_texts(rng, pool, size, n_texts)
            for name, scan in scanners.items():
                for t in texts[:5]:  # warm up
                    scan(t)
                times = []
                for _ in range(3):
                    for t in texts:
                        t0 = time.perf_counter_ns()
                        scan(t)
                        times.append((time.perf_counter_ns() - t0) / 1e6)
                times.sort()
                out[f"{name}/{corpus}/{size}"] = {
                    "scanner": name,
                    "corpus": corpus,
                    "chars": size,
                    "calls": len(times),
                    "p50_ms": round(statistics.median(times), 4),
                    "p95_ms": round(times[int(len(times) * 0.95)], 4),
                    "max_ms": round(times[-1], 4),
                }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--per-entity", type=int, default=400)
    ap.add_argument("--negatives", type=int, default=400)
    ap.add_argument(
        "--out", default="", help="JSON path (default bench/results/pii-eval-<ts>.json)"
    )
    args = ap.parse_args()

    samples = build(args.seed, args.per_entity, args.negatives)
    pii, secrets = PiiScanner(), SecretsScanner()
    metrics = score(samples, lambda t: pii.scan(t, CTX))
    secret_fp = sum(1 for s in samples if secrets.scan(s.text, CTX))

    print(f"samples: {len(samples)} ({args.per_entity}/entity, {args.negatives} hard negatives)")
    print(f"{'entity':<12} {'gold':>5} {'found':>6} {'precision':>9} {'recall':>7}")
    for ent, m in metrics.items():
        print(
            f"{ent:<12} {m['gold']:>5} {m['found']:>6} {m['precision']:>9.3f} {m['recall']:>7.3f}"
        )
    print(f"secrets scanner findings on the PII set (all false positives): {secret_fp}")

    lat = latency(
        samples,
        args.seed,
        {"pii": lambda t: pii.scan(t, CTX), "secrets": lambda t: secrets.scan(t, CTX)},
    )
    print(f"\n{'scanner':<8} {'corpus':<6} {'chars':>6} {'p50 ms':>8} {'p95 ms':>8}")
    for r in lat.values():
        print(
            f"{r['scanner']:<8} {r['corpus']:<6} {r['chars']:>6} "
            f"{r['p50_ms']:>8.3f} {r['p95_ms']:>8.3f}"
        )

    RESULTS.mkdir(parents=True, exist_ok=True)
    path = (
        Path(args.out) if args.out else RESULTS / f"pii-eval-{time.strftime('%Y%m%d-%H%M%S')}.json"
    )
    path.write_text(
        json.dumps(
            {
                "seed": args.seed,
                "per_entity": args.per_entity,
                "negatives": args.negatives,
                "python": platform.python_version(),
                "machine": platform.machine(),
                "metrics": metrics,
                "secrets_false_positives_on_pii_set": secret_fp,
                "latency": lat,
            },
            indent=2,
        )
    )
    print(f"\nwrote {path.relative_to(REPO) if path.is_relative_to(REPO) else path}")


if __name__ == "__main__":
    main()
