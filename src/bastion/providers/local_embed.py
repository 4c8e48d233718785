"""The bundled sentence embedder: all-MiniLM-L6-v2 (int8 ONNX) without torch.

Pipeline, identical to sentence-transformers' ``all-MiniLM-L6-v2`` module stack:
WordPiece tokenisation (``tokenizers``, truncated to 256 tokens like its
``max_seq_length``), the BERT encoder (``onnxruntime``, int8 weights), mean
pooling over the attention mask, L2 normalisation -> 384-dim float32 vectors.

Inputs are sorted by length and run in batches (padding to the longest in each
batch, at most 32 texts and 4096 padded tokens), which keeps padding and
peak memory small. ORT folds the int8 weights to fp32 at load (about 150 MB
resident): without folding, each call would dequantize every weight again
(about 100 ms instead of 6 ms for one sentence). The model loads lazily on first use and is
thread-safe: ``InferenceSession.run`` and ``Tokenizer.encode_batch`` may be called
from several threads, and the one-time load is guarded by a lock.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from bastion.core.errors import UpstreamConnectError
from bastion.providers.models import bundled_embedder_paths, existing_file

Vectors = NDArray[np.float32]

DIMENSIONS = 384
MAX_SEQ_LENGTH = 256
BATCH_SIZE = 32
TOKEN_BUDGET = 4096  # padded tokens per batch: bounds activation memory on long texts


def available_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


class OnnxEmbedder:
    """all-MiniLM-L6-v2 sentence embeddings from an ONNX model and a ``tokenizer.json``.

    ``model_path`` / ``tokenizer_path`` default to the bundled files
    (:func:`~bastion.providers.models.bundled_embedder_paths`). ``threads`` caps
    onnxruntime's intra-op threads (default: the available cores, at most 4).
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
    ) -> None:
        self._model_path = model_path
        self._tokenizer_path = tokenizer_path
        self.max_length = max_length
        self.batch_size = max(1, batch_size)
        self.threads = threads or min(4, available_cores())
        self._lock = threading.Lock()
        self._session: Any = None
        self._tokenizer: Any = None
        self._input_names: frozenset[str] = frozenset()

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
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = self.threads
            opts.inter_op_num_threads = 1
            opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            opts.log_severity_level = 3
            # No arena: a long batch's activations are returned to the OS afterwards
            # instead of staying reserved for the life of the process.
            opts.enable_cpu_mem_arena = False
            session = ort.InferenceSession(
                str(model), sess_options=opts, providers=["CPUExecutionProvider"]
            )
            names = frozenset(i.name for i in session.get_inputs())
            missing = {"input_ids", "attention_mask"} - names
            if missing:
                raise UpstreamConnectError(
                    f"embedding model lacks inputs {sorted(missing)}; not a BERT export"
                )
            self._tokenizer = tokenizer
            self._input_names = names
            self._session = session

    def _paths(self) -> tuple[Path, Path]:
        if self._model_path is None or self._tokenizer_path is None:
            bundled_model, bundled_tok = bundled_embedder_paths()
        model = (
            existing_file(self._model_path, "embedding model")
            if self._model_path is not None
            else bundled_model
        )
        tok = (
            existing_file(self._tokenizer_path, "tokenizer")
            if self._tokenizer_path is not None
            else bundled_tok
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
        ids = [e.ids for e in self._tokenizer.encode_batch(list(texts))]
        out = np.zeros((len(ids), DIMENSIONS), dtype=np.float32)
        for batch in self._batches([len(x) for x in ids]):
            out[batch] = self._run([ids[i] for i in batch])
        return out, [len(x) for x in ids]

    def _batches(self, lengths: list[int]) -> list[list[int]]:
        """Indices sorted by length, cut into batches of at most ``batch_size`` texts
        and ``TOKEN_BUDGET`` padded tokens."""
        batches: list[list[int]] = []
        current: list[int] = []
        for i in sorted(range(len(lengths)), key=lengths.__getitem__):
            full = len(current) >= self.batch_size
            if current and (full or (len(current) + 1) * lengths[i] > TOKEN_BUDGET):
                batches.append(current)
                current = []
            current.append(i)
        if current:
            batches.append(current)
        return batches

    def _run(self, batch: list[list[int]]) -> Vectors:
        width = max(len(x) for x in batch)
        ids = np.zeros((len(batch), width), dtype=np.int64)  # [PAD] is id 0
        mask = np.zeros_like(ids)
        for row, seq in enumerate(batch):
            ids[row, : len(seq)] = seq
            mask[row, : len(seq)] = 1
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self._input_names:
            feeds["token_type_ids"] = np.zeros_like(ids)
        (hidden,) = self._session.run(["last_hidden_state"], feeds)
        m = mask[:, :, None].astype(np.float32)
        pooled = (hidden * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1e-9)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        vecs: Vectors = (pooled / np.maximum(norms, 1e-12)).astype(np.float32)
        return vecs
