"""The layered injection detector (rules, classifier, both) on the held-out sets, quickly.

Prints TPR, benign FPR and balanced accuracy of each layer and of the deployed
detector (their union at the ``full`` preset's threshold, 0.5) on the s-labs
and neuralchemy test splits and on the out-of-domain set (yanismiraoui
injections + chatterbot-corpus benign chat lines, six languages). No training,
no latency: ``injection_eval.py`` has the full report. Usage (from the
repository root; needs ``pip install scikit-learn pandas pyarrow``)::

    .venv/bin/python bench/guard/detector_eval.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import injection_eval as E
import train_injection as T

from bastion.guard.injection import InjectionClassifier


def main() -> None:
    data = T.load_data()
    ood, _ = E.ood_split(data)
    clf = InjectionClassifier()
    rules = E.Detector(InjectionClassifier(threshold=2.0))  # rules only
    print("| split | detector | TPR | benign FPR | balanced accuracy |")
    print("|---|---|---|---|---|")
    for name, split in (
        ("s-labs/test", data["s-labs/test"]),
        ("neuralchemy/test", data["neuralchemy/test"]),
        ("OOD: yanismiraoui + chatterbot", ood),
    ):
        by_rules = np.array([rules.flags(t) for t in split.texts])
        by_clf = np.array([clf.score(t) >= E.THRESHOLD for t in split.texts])
        y = np.asarray(split.labels).astype(bool)
        for label, pred in (
            ("rules", by_rules),
            ("classifier", by_clf),
            ("rules + classifier (deployed)", by_rules | by_clf),
        ):
            tpr = float((pred & y).sum() / max(1, y.sum()))
            fpr = float((pred & ~y).sum() / max(1, (~y).sum()))
            print(f"| {name} | {label} | {tpr:.3f} | {fpr:.4f} | {(tpr + 1 - fpr) / 2:.4f} |")
        only_rules = int((by_rules & ~by_clf & y).sum())
        print(f"| {name} | injections caught by the rules only | {only_rules} | | |")


if __name__ == "__main__":
    main()
