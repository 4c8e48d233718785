"""int8 ONNX MiniLM against the fp32 weights: cosine per sentence.

Usage (from the repository root)::

    .venv/bin/python bench/local/fidelity.py

Uses the test suite's sentences and its pure-numpy fp32 reference
(``tests/reference/minilm_numpy.py``); prints mean, median and minimum cosine.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.reference.minilm_numpy import MiniLMReference
from tests.unit.test_local_embed import SENTENCES

from bastion.providers.local_embed import OnnxEmbedder


def main() -> None:
    expected = MiniLMReference().embed(SENTENCES)
    got = OnnxEmbedder().embed(SENTENCES)
    cos = np.sum(expected * got, axis=1)
    print(f"sentences: {len(SENTENCES)}")
    print(f"mean cosine:   {cos.mean():.5f}")
    print(f"median cosine: {float(np.median(cos)):.5f}")
    print(f"min cosine:    {cos.min():.5f}")


if __name__ == "__main__":
    main()
