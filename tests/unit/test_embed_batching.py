"""The embedder's batching, threading and its ONNX graph builder.

Batches sorted by length and run in parallel must give the same vectors as one
text at a time; the graph built from safetensors must match the numpy fp32
reference for any BERT shape, not only MiniLM's.
"""

from __future__ import annotations

import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from bastion.core.errors import UpstreamConnectError
from bastion.providers.local_embed import (
    OnnxEmbedder,
    _varint,
    build_minilm_onnx,
    read_safetensors,
)
from bastion.providers.models import bundled_embedder_paths, bundled_embedder_weights

TEXTS = [
    "short",
    "The meeting has been moved to Thursday at 3:30 pm in room 4B.",
    "Refunds are processed within 5-7 business days after we receive the item. " * 6,
    "Kubernetes schedules pods onto nodes based on resource requests.",
    "word " * 400,  # truncated to 256 tokens
    "",
    "A cat was sitting on a rug.",
    "Photosynthesis converts light energy into chemical energy in plants. " * 3,
]


@pytest.fixture(scope="module")
def serial() -> OnnxEmbedder:
    return OnnxEmbedder(threads=1)


def test_batches_respect_budgets_and_cover_every_text() -> None:
    emb = OnnxEmbedder(batch_size=4, token_budget=600)
    lengths = [256, 3, 40, 40, 120, 256, 7, 250, 3, 90, 90, 90, 90, 90]
    batches = emb._batches(lengths)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    order = [lengths[i] for b in batches for i in b]
    assert order == sorted(lengths)  # sorted by length: padding only within a batch
    for b in batches:
        assert len(b) <= 4
        assert len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 600


def test_parallel_batches_match_one_at_a_time(serial: OnnxEmbedder) -> None:
    parallel = OnnxEmbedder(threads=2, token_budget=256, batch_size=2)
    assert parallel.workers == 2
    vecs, counts = parallel.embed_with_counts(TEXTS)
    alone = [serial.embed_with_counts([t]) for t in TEXTS]
    np.testing.assert_allclose(vecs, np.concatenate([v for v, _ in alone]), atol=2e-5)
    assert counts == [c[0] for _, c in alone]
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)


def test_one_batch_request_uses_the_all_threads_session() -> None:
    emb = OnnxEmbedder(threads=2)
    emb.load()
    assert emb._solo is not emb._session and emb._pool is not None
    one = emb.embed(TEXTS[:1])
    many = emb.embed(TEXTS * 20)  # many batches: the worker threads
    np.testing.assert_allclose(one[0], many[0], atol=2e-5)


def test_concurrent_callers_get_their_own_results(serial: OnnxEmbedder) -> None:
    emb = OnnxEmbedder(threads=2, token_budget=512)
    expected = serial.embed(TEXTS)
    inputs = [TEXTS[i:] + TEXTS[:i] for i in range(8)]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(emb.embed, inputs))
    for i, got in enumerate(results):
        np.testing.assert_allclose(got, np.roll(expected, -i, axis=0), atol=2e-5)


def test_onnx_file_and_explicit_safetensors_still_load(serial: OnnxEmbedder) -> None:
    expected = serial.embed(TEXTS)
    int8 = OnnxEmbedder(bundled_embedder_paths()[0], threads=2).embed(TEXTS)
    assert float(np.sum(int8 * expected, axis=1).min()) >= 0.995  # int8 weights
    fp32 = OnnxEmbedder(bundled_embedder_weights(), bundled_embedder_paths()[1]).embed(TEXTS)
    np.testing.assert_allclose(fp32, expected, atol=2e-5)


def test_varint() -> None:
    assert _varint(0) == b"\x00"
    assert _varint(1) == b"\x01"
    assert _varint(300) == b"\xac\x02"
    assert _varint(2**40) == b"\x80" * 5 + b"\x20"


def _tiny_bert(directory: Path, hidden: int = 32, heads: int = 4, layers: int = 2) -> None:
    """A random BERT with the bundled tokenizer's vocabulary, in ``directory``."""
    from safetensors.numpy import save_file

    tokenizer = bundled_embedder_paths()[1]
    vocab = json.loads(tokenizer.read_text())["model"]["vocab"]
    rng = np.random.default_rng(0)

    def r(*shape: int, scale: float = 0.2) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    w = {
        "embeddings.word_embeddings.weight": r(len(vocab), hidden),
        "embeddings.position_embeddings.weight": r(64, hidden),
        "embeddings.token_type_embeddings.weight": r(2, hidden),
        "embeddings.LayerNorm.weight": 1 + r(hidden, scale=0.1),
        "embeddings.LayerNorm.bias": r(hidden, scale=0.1),
    }
    for i in range(layers):
        p = f"encoder.layer.{i}."
        for n in ("query", "key", "value"):
            w[p + f"attention.self.{n}.weight"] = r(hidden, hidden)
            w[p + f"attention.self.{n}.bias"] = r(hidden)
        w[p + "attention.output.dense.weight"] = r(hidden, hidden)
        w[p + "attention.output.dense.bias"] = r(hidden)
        w[p + "intermediate.dense.weight"] = r(4 * hidden, hidden)
        w[p + "intermediate.dense.bias"] = r(4 * hidden)
        w[p + "output.dense.weight"] = r(hidden, 4 * hidden)
        w[p + "output.dense.bias"] = r(hidden)
        for ln in ("attention.output.LayerNorm", "output.LayerNorm"):
            w[p + ln + ".weight"] = 1 + r(hidden, scale=0.1)
            w[p + ln + ".bias"] = r(hidden, scale=0.1)
    save_file(w, str(directory / "model.safetensors"))
    config = {
        "model_type": "bert",
        "hidden_act": "gelu",
        "hidden_size": hidden,
        "num_attention_heads": heads,
        "num_hidden_layers": layers,
        "intermediate_size": 4 * hidden,
        "layer_norm_eps": 1e-12,
        "max_position_embeddings": 64,
        "vocab_size": len(vocab),
    }
    (directory / "config.json").write_text(json.dumps(config))
    shutil.copy(tokenizer, directory / "tokenizer.json")


def test_graph_builder_matches_reference_on_another_bert_shape(tmp_path: Path) -> None:
    from tests.reference.minilm_numpy import MiniLMReference

    _tiny_bert(tmp_path)
    texts = [t[:150] for t in TEXTS if t]
    emb = OnnxEmbedder(tmp_path / "model.safetensors", tmp_path / "tokenizer.json", max_length=64)
    got = emb.embed(texts)
    assert got.shape == (len(texts), 32)
    expected = MiniLMReference(tmp_path, max_length=64).embed(texts)
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_builder_rejects_what_it_cannot_build(tmp_path: Path) -> None:
    _tiny_bert(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "hidden_act": "relu"}))
    with pytest.raises(UpstreamConnectError, match="GELU"):
        build_minilm_onnx(tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps(config))
    weights = read_safetensors(tmp_path / "model.safetensors")
    from safetensors.numpy import save_file

    save_file(
        {k: np.asarray(v) for k, v in weights.items() if "layer.1.output" not in k},
        str(tmp_path / "model.safetensors"),
    )
    with pytest.raises(UpstreamConnectError, match="lack tensor"):
        build_minilm_onnx(tmp_path / "model.safetensors")
    (tmp_path / "model.safetensors").write_bytes(b"\x00")
    with pytest.raises(UpstreamConnectError, match="unreadable"):
        build_minilm_onnx(tmp_path / "model.safetensors")
