"""The learned prompt-injection / jailbreak classifier (the second detector layer).

A linear model over hashed character n-grams (orders ``nmin..nmax``) and word
uni/bigrams of the lower-cased text, L2-normalised counts, logistic output.
Pure numpy at inference: features are hashed with a vectorised polynomial
rolling hash into ``2**bits`` buckets, so no vocabulary is stored; the
weights (float16) and settings ship in ``bastion/guard/models/injection-v1.npz``,
written by ``bench/guard/train_injection.py`` (see ``MODEL_CARD.md`` next to it).

Texts longer than ``window`` characters are scored in overlapping sentence
windows at two scales (:func:`windows`): an instruction hidden in the middle
of a long document would be diluted in a whole-text score.
:meth:`InjectionClassifier.scan` reports the best window at or above the
threshold, with its span in the given text.

Scores are shifted so that **0.5 is the operating point** chosen on held-out
validation data: benign false-positive rate at most 2% on each labelled
validation half and on translated software messages (six languages) for texts
that fit in one window, and at most 2% of 2,000-character benign documents for
longer texts (which get their own, stricter bias). They rank texts but are not
calibrated probabilities. The ``injection`` scanner runs this model after the
rules of :mod:`bastion.guard.rules`; a finding of either counts.
"""

from __future__ import annotations

import re
import threading
import zlib
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from bastion.guard.base import Finding, ScanContext

MODEL_PACKAGE = "bastion.guard.models"
MODEL_FILE = "injection-v1.npz"

_MIX = np.uint64(0x9E3779B97F4A7C15)  # Fibonacci hashing multiplier (2**64 / golden ratio)
_BASE = np.uint64(1_000_003)  # rolling-hash base
_WORD_SEED = 0x5BD1E995
_WHITESPACE = {c: 32 for c in range(0x3001) if chr(c).isspace()}
_WORD = re.compile(r"\w+")
_BOUNDARY = re.compile(r"(?<=[.!?;:\u3002\uff01\uff1f])\s+|\s*\n\s*")

Ints = NDArray[np.int64]
Group = tuple[Ints, Ints, Ints]  # (buckets, starts, ends), starts and ends both ascending


@dataclass(frozen=True, slots=True)
class FeatureSpec:
    """How text becomes hashed features (stored with the weights)."""

    bits: int = 18
    nmin: int = 1
    nmax: int = 5
    words: int = 2  # word n-grams up to this order (0: none)


def _fold(text: str) -> str:
    """Lower-cased, every whitespace character a space; same length as ``text``."""
    low = text.lower()
    if len(low) != len(text):  # e.g. "İ" lower-cases to two characters
        low = "".join(c.lower()[0] for c in text)
    return low.translate(_WHITESPACE)


def _crc(gram: str) -> int:
    return zlib.crc32(gram.encode("utf-8", "surrogatepass"))


def _bucket(h: NDArray[np.uint64], seed: int, bits: int) -> Ints:
    mixed = (h + np.uint64(seed)) * _MIX
    return (mixed >> np.uint64(64 - bits)).astype(np.int64)


def featurize(text: str, spec: FeatureSpec) -> list[Group]:
    """Hashed features of ``text`` in groups, each with the character span of every feature."""
    low = _fold(text)
    codes = np.frombuffer(low.encode("utf-32-le", "surrogatepass"), dtype=np.uint32).astype(
        np.uint64
    )
    groups: list[Group] = []
    rolling = np.zeros(len(codes), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for n in range(1, min(spec.nmax, len(codes)) + 1):
            rolling = rolling[: len(codes) - n + 1] * _BASE + codes[n - 1 :]
            if n >= spec.nmin:
                starts = np.arange(len(rolling), dtype=np.int64)
                groups.append((_bucket(rolling, n * 7919, spec.bits), starts, starts + n))
        if spec.words:
            spans = [(m.start(), m.end()) for m in _WORD.finditer(low)]
            tokens = [low[a:b] for a, b in spans]
            for n in range(1, spec.words + 1):
                if len(tokens) < n:
                    break
                grams = [" ".join(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
                h = np.fromiter((_crc(g) for g in grams), np.uint64, len(grams))
                ws = np.fromiter((spans[i][0] for i in range(len(grams))), np.int64, len(grams))
                we = np.fromiter((spans[i + n - 1][1] for i in range(len(grams))), np.int64)
                groups.append((_bucket(h * _BASE, _WORD_SEED + n, spec.bits), ws, we))
    return groups


def window_buckets(groups: list[Group], start: int, end: int) -> Ints:
    """The buckets of the features that lie entirely inside ``[start, end)``."""
    parts = []
    for buckets, starts, ends in groups:
        lo = int(np.searchsorted(starts, start, "left"))
        hi = int(np.searchsorted(ends, end, "right"))
        if hi > lo:
            parts.append(buckets[lo:hi])
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def _windows_at(text: str, size: int) -> list[tuple[int, int]]:
    n = len(text)
    cuts = [(m.start(), m.end()) for m in _BOUNDARY.finditer(text)]
    sentence_starts = [0] + [b for _, b in cuts if b < n]
    sentence_ends = sorted({a for a, _ in cuts if a > 0} | {n})
    starts: list[int] = []
    for i, s in enumerate(sentence_starts):
        nxt = sentence_starts[i + 1] if i + 1 < len(sentence_starts) else n
        starts.extend(range(s, max(s + 1, nxt - size // 2), size // 2))
    out: list[tuple[int, int]] = []
    last = -size
    for s in starts:
        if s - last < size // 4:
            continue
        last = s
        j = int(np.searchsorted(sentence_ends, s + size, "right")) - 1
        end = sentence_ends[j] if j >= 0 and sentence_ends[j] > s else min(n, s + size)
        if end < n and end == s + size:  # a hard cut: back off to a space
            space = text.rfind(" ", s + size * 3 // 4, end)
            end = space if space > 0 else end
        out.append((s, end))
        if end >= n:
            break
    return out


def windows(text: str, size: int) -> list[tuple[int, int]]:
    """Overlapping sentence windows ``(start, end)`` of ``text``, sorted.

    ``[(0, len(text))]`` when the text fits in ``size`` characters. Otherwise
    windows at two scales, ``size`` and ``size // 3`` (a short instruction
    inside a long window is diluted by its neighbours): at each scale a window
    starts at each sentence boundary (and every half window inside longer
    sentences), at least a quarter window after the previous one, and runs to
    the last sentence end that fits.
    """
    if len(text) <= size:
        return [(0, len(text))]
    return sorted(set(_windows_at(text, size)) | set(_windows_at(text, max(16, size // 3))))


@dataclass(frozen=True, slots=True)
class InjectionModel:
    """Weights, biases and the settings they need.

    ``bias`` applies to texts that fit in one window, ``doc_bias`` to the
    windows of longer ones (stricter: a long text has many windows, each a
    chance of a false positive). Both put the operating point at logit 0.
    """

    spec: FeatureSpec
    weights: NDArray[np.float32]
    bias: float
    doc_bias: float
    window: int
    meta: dict[str, str]


def load_model(path: Path | None = None) -> InjectionModel:
    """Read the weights file (the bundled one unless ``path`` is given)."""
    source = files(MODEL_PACKAGE).joinpath(MODEL_FILE) if path is None else path
    with source.open("rb") as fh, np.load(fh, allow_pickle=False) as z:
        spec = FeatureSpec(*(int(z[k]) for k in ("bits", "nmin", "nmax", "words")))
        meta = {k[5:]: str(z[k]) for k in z.files if k.startswith("meta_")}
        weights = z["weights"].astype(np.float32)
        if weights.shape != (1 << spec.bits,):
            raise ValueError(f"{MODEL_FILE}: weights shape {weights.shape} != 2**{spec.bits}")
        bias, doc_bias = float(z["bias"]), float(z["doc_bias"])
        return InjectionModel(spec, weights, bias, doc_bias, int(z["window"]), meta)


def window_logit(weights: NDArray[np.float32], buckets: Ints) -> float:
    """The linear score (without bias) of one bag of buckets, counts L2-normalised."""
    if len(buckets) == 0:
        return 0.0
    uniq, counts = np.unique(buckets, return_counts=True)
    c = counts.astype(np.float32)
    return float(weights[uniq] @ c) / float(np.sqrt(c @ c))


def window_logits(
    weights: NDArray[np.float32], groups: list[Group], spans: list[tuple[int, int]]
) -> NDArray[np.float64]:
    """:func:`window_logit` of every window in ``spans`` at once, without a Python loop.

    For each group the features inside each window are one contiguous run (features
    are sorted by start and by end), found with one ``searchsorted`` per group. The
    numerator is the sum of the features' weights (a difference of prefix sums); the
    norm is the square root of the sum of squared bucket counts, from one sort of
    ``(window, bucket)`` keys. A single window (a short text) takes the direct path
    of :func:`window_logit`, which is cheaper for one.
    """
    k = len(spans)
    if k == 1:
        return np.array([window_logit(weights, window_buckets(groups, *spans[0]))])
    bits = int(weights.size).bit_length() - 1  # buckets are < 2**bits
    dtype = np.int32 if k < 1 << (31 - bits) else np.int64  # int32 keys sort twice as fast
    starts = np.fromiter((a for a, _ in spans), np.int64, k)
    ends = np.fromiter((b for _, b in spans), np.int64, k)
    keys, numerators = [], np.zeros(k)
    for buckets, f_starts, f_ends in groups:
        lo = np.searchsorted(f_starts, starts, "left")
        hi = np.searchsorted(f_ends, ends, "right")
        lengths = np.maximum(hi - lo, 0)
        total = int(lengths.sum())
        if total == 0:
            continue
        prefix = np.concatenate(([0.0], np.cumsum(weights[buckets], dtype=np.float64)))
        numerators += np.where(lengths > 0, prefix[hi] - prefix[lo], 0.0)
        win: NDArray[np.signedinteger[Any]] = np.repeat(np.arange(k, dtype=dtype), lengths)
        offsets = np.cumsum(lengths) - lengths
        idx = np.arange(total, dtype=np.int64) - np.repeat(offsets - lo, lengths)
        keys.append((win << bits) | buckets[idx].astype(dtype))
    if not keys:
        return np.zeros(k)
    key = np.concatenate(keys)
    key.sort()
    edges = np.flatnonzero(key[1:] != key[:-1]) + 1
    run_starts = np.concatenate(([0], edges))
    runs = np.diff(np.concatenate((run_starts, [len(key)])))
    sq = np.bincount(key[run_starts] >> bits, weights=runs.astype(np.float64) ** 2, minlength=k)
    out = np.zeros(k)
    np.divide(numerators, np.sqrt(sq), out=out, where=sq > 0)
    return out


def _sigmoid(z: float) -> float:
    return float(1.0 / (1.0 + np.exp(-np.clip(z, -40.0, 40.0))))


class InjectionClassifier:
    """Scanner: prompt injection / jailbreak score of a text, from the bundled linear model.

    ``threshold`` is the minimum score of a finding (default 0.5, the
    validation-chosen operating point). ``model`` (in memory) or ``model_path``
    replace the bundled weights; ``window`` overrides the window size stored
    with them. The weights load on first use, once, under a lock.
    """

    name = "injection_classifier"

    def __init__(
        self,
        threshold: float = 0.5,
        *,
        model: InjectionModel | None = None,
        model_path: str | Path | None = None,
        window: int | None = None,
    ) -> None:
        self.threshold = threshold
        self._model_path = model_path
        self._window = window
        self._model = model
        self._lock = threading.Lock()

    def _load(self) -> InjectionModel:
        model = self._model
        if model is not None:
            return model
        with self._lock:
            if self._model is None:
                path = None if self._model_path is None else Path(self._model_path)
                self._model = load_model(path)
            return self._model

    @property
    def meta(self) -> dict[str, str]:
        """What the weights file says about itself (version, data, metrics)."""
        return dict(self._load().meta)

    def best_window(self, text: str) -> tuple[float, int, int]:
        """``(score, start, end)`` of the highest-scoring window of ``text``."""
        model = self._load()
        size = self._window or model.window
        groups = featurize(text, model.spec)
        spans = windows(text, size)
        z = window_logits(model.weights, groups, spans)
        best = int(np.argmax(z))  # the first of equal scores, as a loop would keep
        best_z, (best_start, best_end) = float(z[best]), spans[best]
        bias = model.bias if len(text) <= size else model.doc_bias
        return _sigmoid(best_z + bias), best_start, best_end

    def score(self, text: str) -> float:
        """Injection score of ``text`` in 0..1 (its best window's)."""
        return self.best_window(text)[0]

    def scan(self, text: str, ctx: ScanContext | None = None) -> list[Finding]:
        """One ``injection`` finding for the best window at or above the threshold."""
        if not text.strip():
            return []
        p, start, end = self.best_window(text)
        if p < self.threshold:
            return []
        return [Finding(scanner=self.name, category="injection", score=p, start=start, end=end)]
