"""The bundled local model: llama.cpp chat and an ONNX embedder, in-process.

:class:`LocalProvider` runs a GGUF chat model (by default SmolLM2-135M-Instruct,
see :mod:`bastion.providers.models`) with ``llama-cpp-python`` and embeds with
:class:`~bastion.providers.local_embed.OnnxEmbedder`. Both load lazily on first
use (``bastion serve`` stays small until a request needs them); :meth:`warm`
loads them ahead of time.

* **Threads, not the event loop.** Generation runs in worker threads; streams hand
  chunks to the loop with ``call_soon_threadsafe``. A closed stream, a cancelled
  call or a timeout sets a cancel flag that the generation checks between tokens.
* **Bounded.** At most ``max_concurrency`` generations run (one llama.cpp context
  each; the weights are shared through mmap) and at most ``max_queue`` wait;
  beyond that the call fails at once with :class:`~bastion.core.errors.Overloaded`.
* **Template.** The prompt is rendered with the model's own chat template from the
  GGUF metadata (``chat_format=None``) or a named llama.cpp ``chat_format``.
* **Translation.** Requests become llama.cpp arguments, and its results OpenAI
  ``chat.completion`` / ``chat.completion.chunk`` dicts, in
  :mod:`bastion.providers.local_chat` (``response_format`` as a grammar, forced
  ``tool_choice`` as a ``tool_calls`` message; see there).
* **Usage.** Prompt and completion tokens are counted in the generation loop (the
  end-of-generation token is not counted), for streams and non-streams alike.
* **CPU.** ``n_threads`` defaults to the free cores minus one (for the event
  loop), split across ``max_concurrency``; ``OMP_WAIT_POLICY`` defaults to
  ``PASSIVE``. llama.cpp's extra weight buffers (AMX / repacked layouts) are off
  unless ``extra_buffers=True``: the AMX path crashes (SIGSEGV) on some CPUs and
  VMs, and a Q4_1 model gains nothing from CPU repacking.
* **Determinism.** Each request re-evaluates its whole prompt, so the same request
  (``temperature=0`` or a ``seed``) gives the same output; ``prefix_cache=True``
  reuses the previous prompt's KV cache instead (faster multi-turn chats, but the
  re-evaluated boundary token can change greedy output).
"""

from __future__ import annotations

import asyncio
import importlib
import os
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from bastion.core.errors import (
    BastionError,
    InvalidRequest,
    RequestTooLarge,
    UpstreamConnectError,
    UpstreamError,
    UpstreamTimeout,
)
from bastion.core.types import JSON, ChatRequest, EmbeddingRequest
from bastion.providers.base import CallContext
from bastion.providers.local_chat import (
    JSON_ATTEMPTS,
    chunk_head,
    completion_body,
    embed_texts,
    embeddings_body,
    json_ok,
    retry_params,
    stream_choice,
)
from bastion.providers.local_chat import MAX_EMBED_INPUTS as MAX_EMBED_INPUTS
from bastion.providers.local_chat import build_params as build_params
from bastion.providers.local_chat import chunk_delta as chunk_delta
from bastion.providers.local_chat import tool_calls_of as tool_calls_of
from bastion.providers.local_embed import OnnxEmbedder, available_cores
from bastion.providers.local_gate import Gate as Gate
from bastion.providers.models import bundled_chat_model_path, existing_file

DEFAULT_MAX_TOKENS = 256

_LOAD_LOCK = threading.Lock()
_LLAMA_CLASS: Any = None


def _llama_class() -> Any:
    """A ``llama_cpp.Llama`` subclass whose token loop counts tokens and obeys cancel."""
    global _LLAMA_CLASS
    if _LLAMA_CLASS is not None:
        return _LLAMA_CLASS
    # Idle OpenMP workers sleep instead of spinning: spinning threads starve the
    # event loop and collapse throughput when cores are shared. Set before the
    # OpenMP runtime loads; an explicit OMP_WAIT_POLICY wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        llama_cpp: Any = importlib.import_module("llama_cpp")
    except ImportError as exc:
        raise UpstreamConnectError(
            "the local model needs llama-cpp-python; install Bastion's `local` extra"
        ) from exc

    class BastionLlama(llama_cpp.Llama):  # type: ignore[misc]
        bastion_run: Run | None = None

        def generate(self, tokens: Any, *args: Any, **kwargs: Any) -> Iterator[int]:
            run = self.bastion_run
            inner = super().generate(tokens, *args, **kwargs)
            if run is None:
                yield from inner
                return
            run.prompt_tokens = len(tokens)
            try:
                for token in inner:
                    if run.cancel.is_set():
                        run.cancelled = True
                        return
                    if not llama_cpp.llama_vocab_is_eog(self._model.vocab, token):
                        run.completion_tokens += 1
                    yield token
            finally:
                inner.close()

    _LLAMA_CLASS = BastionLlama
    return _LLAMA_CLASS


class LocalProvider:
    """In-process chat (llama.cpp) and embeddings (onnxruntime); see the module docs."""

    type = "local"

    def __init__(
        self,
        name: str = "local",
        *,
        model_path: str | None = None,
        embed_model_path: str | None = None,
        tokenizer_path: str | None = None,
        n_ctx: int = 2048,
        n_threads: int | None = None,
        max_concurrency: int = 1,
        max_queue: int = 16,
        chat_format: str | None = None,
        default_max_tokens: int = DEFAULT_MAX_TOKENS,
        extra_buffers: bool = False,
        prefix_cache: bool = False,
    ) -> None:
        self.name = name
        self.model_path = model_path
        self.n_ctx = n_ctx
        self.max_concurrency = max(1, max_concurrency)
        # One core is left to the event loop (and the embedder); llama.cpp's OpenMP
        # threads collapse when they outnumber free cores.
        cores = max(1, available_cores() - 1)
        self.n_threads = n_threads or max(1, min(8, cores // self.max_concurrency))
        self.chat_format = chat_format
        self.default_max_tokens = default_max_tokens
        self.extra_buffers = extra_buffers
        self.prefix_cache = prefix_cache
        self.embedder = OnnxEmbedder(embed_model_path, tokenizer_path)
        self._gate = Gate(self.max_concurrency, max(0, max_queue), "local model queue full")
        self._pool: list[Any] = []  # idle llama instances, one context each
        self._pool_lock = threading.Lock()
        self._runs: set[Run] = set()
        self._gen = ThreadPoolExecutor(self.max_concurrency, thread_name_prefix="bastion-llm")
        self._emb = ThreadPoolExecutor(1, thread_name_prefix="bastion-embed")
        self.load_seconds: float | None = None
        self.cancelled_generations = 0

    # -- model instances ------------------------------------------------------

    def _load(self) -> Any:
        path = (
            existing_file(self.model_path, "local model")
            if self.model_path
            else bundled_chat_model_path()
        )
        cls = _llama_class()
        capi: Any = importlib.import_module("llama_cpp.llama_cpp")

        start = time.perf_counter()
        with _LOAD_LOCK:
            default_params = capi.llama_model_default_params

            def params() -> Any:
                p = default_params()
                p.use_extra_bufts = self.extra_buffers
                return p

            capi.llama_model_default_params = params
            try:
                llm = cls(
                    model_path=str(path),
                    n_ctx=self.n_ctx,
                    n_threads=self.n_threads,
                    n_threads_batch=self.n_threads,
                    chat_format=self.chat_format,
                    verbose=False,
                )
            except ValueError as exc:
                raise UpstreamConnectError(f"local model failed to load: {exc}") from exc
            finally:
                capi.llama_model_default_params = default_params
        self.load_seconds = time.perf_counter() - start
        return llm

    def _checkout(self) -> Any:
        with self._pool_lock:
            if self._pool:
                return self._pool.pop()
        return self._load()

    def _checkin(self, llm: Any) -> None:
        with self._pool_lock:
            self._pool.append(llm)

    async def warm(self, *, chat: bool = True, embed: bool = False) -> None:
        """Load the chat model (and, with ``embed=True``, the embedder) now."""
        loop = asyncio.get_running_loop()
        if chat:
            await self._gate.acquire()
            try:
                llm = await loop.run_in_executor(self._gen, self._checkout)
                self._checkin(llm)
            finally:
                self._gate.release()
        if embed:
            await loop.run_in_executor(self._emb, self.embedder.load)

    # -- generation -------------------------------------------------------------

    def stats(self) -> dict[str, int]:
        """Running and queued generations, loaded instances, generations cancelled."""
        return {
            "running": self._gate.running,
            "waiting": self._gate.waiting,
            "idle_instances": len(self._pool),
            "cancelled": self.cancelled_generations,
        }

    async def _start(
        self, run: Run, params: dict[str, Any], on_chunk: Callable[[Any], None]
    ) -> Future[Any]:
        """Take a slot (or raise ``Overloaded``) and start the generation in a worker."""
        await self._gate.acquire()
        self._runs.add(run)
        try:
            fut = self._gen.submit(self._generate, run, params, on_chunk)
        except RuntimeError as exc:  # the executor is shut down
            self._abandon(run)
            raise UpstreamConnectError("local provider is closed", deployment=self.name) from exc
        # A future cancelled before its worker started never runs _generate: free its slot.
        fut.add_done_callback(lambda f: self._abandon(run) if f.cancelled() else None)
        return fut

    def _abandon(self, run: Run) -> None:
        self._runs.discard(run)
        self._gate.release()

    def _generate(self, run: Run, params: dict[str, Any], on_chunk: Callable[[Any], None]) -> Any:
        """One generation, in a worker thread; frees its slot when it really ends."""
        llm = None
        try:
            llm = self._checkout()
            llm.bastion_run = run
            if not self.prefix_cache:
                llm.reset()  # re-evaluate the whole prompt: same request, same output
            result = llm.create_chat_completion(**params)
            fmt = params.get("response_format")
            if not params["stream"] and fmt is not None:
                for attempt in range(1, JSON_ATTEMPTS):
                    text = result["choices"][0]["message"].get("content") or ""
                    if json_ok(text, fmt) or run.cancel.is_set():
                        break
                    llm.reset()
                    result = llm.create_chat_completion(**retry_params(params, attempt))
            if not params["stream"]:
                return result
            try:
                for chunk in result:
                    if run.cancel.is_set():
                        break
                    on_chunk(chunk)
            finally:
                result.close()
            return None
        except ValueError as exc:  # prompt longer than the context, template errors
            if "exceed context window" in str(exc):
                raise RequestTooLarge(
                    f"prompt too long for the local model (context {self.n_ctx} tokens)",
                    param="messages",
                ) from exc
            # The text may quote the request (a schema, a template message): not echoed.
            raise InvalidRequest("the local model could not format this request") from exc
        except BastionError:
            raise
        except Exception as exc:
            if type(exc).__module__.startswith("jinja2"):  # the chat template refused it
                raise InvalidRequest("the model's chat template rejected the messages") from exc
            raise UpstreamError(
                f"local model failed: {type(exc).__name__}", deployment=self.name
            ) from exc
        finally:
            if llm is not None:
                llm.bastion_run = None
                self._checkin(llm)
            if run.cancelled:
                with self._pool_lock:
                    self.cancelled_generations += 1
            self._runs.discard(run)
            self._gate.release()

    async def chat(self, request: ChatRequest, model: str, ctx: CallContext) -> JSON:
        """A ``chat.completion``; generation runs in a worker thread."""
        params, forced_tool = build_params(request, self.default_max_tokens, stream=False)
        run = Run()
        start = ctx.clock()
        try:
            fut = await self._start(run, params, _ignore)
            async with asyncio.timeout(ctx.timeouts.total):
                result = await asyncio.wrap_future(fut)
        except TimeoutError as exc:
            raise UpstreamTimeout("local model timed out", deployment=self.name) from exc
        finally:
            run.cancel.set()  # a no-op unless the caller left (cancelled) or timed out
            ctx.upstream_s += ctx.clock() - start
        return completion_body(result, model, forced_tool, run.usage())

    async def chat_stream(
        self, request: ChatRequest, model: str, ctx: CallContext
    ) -> AsyncIterator[JSON]:
        """``chat.completion.chunk`` dicts; the last has empty ``choices`` and ``usage``.

        Closing the iterator early (client gone) stops the generation at the next
        token; ``aclose()`` returns once the worker has stopped and freed its slot.
        """
        params, _ = build_params(request, self.default_max_tokens, stream=True)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        run = Run()
        head = chunk_head(model)
        tool_ids: dict[int, str] = {}
        fut: Future[Any] | None = None

        def push(item: tuple[str, Any]) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the loop is gone; stop generating
                run.cancel.set()

        def done(f: Future[Any]) -> None:
            if f.cancelled():  # never started: the provider is shutting down
                push(("error", UpstreamConnectError("local provider is closed")))
            elif (exc := f.exception()) is not None:
                push(("error", exc))
            else:
                push(("end", None))

        waited_from = ctx.clock()
        try:
            fut = await self._start(run, params, lambda c: push(("chunk", c)))
            fut.add_done_callback(done)
            timeout = ctx.timeouts.first_byte
            while True:
                try:
                    async with asyncio.timeout(timeout):
                        kind, item = await queue.get()
                except TimeoutError as exc:
                    raise UpstreamTimeout("local model stalled", deployment=self.name) from exc
                finally:
                    ctx.upstream_s += ctx.clock() - waited_from
                timeout = ctx.timeouts.stream_idle
                if kind == "error":
                    raise item
                if kind == "end":
                    break
                yield {**head, "choices": [stream_choice(item, tool_ids)]}
                waited_from = ctx.clock()
            yield {**head, "choices": [], "usage": run.usage()}
        finally:
            run.cancel.set()
            if fut is not None and not fut.done():
                # Wait (about one token) so the slot is free when aclose() returns.
                await asyncio.wait([asyncio.wrap_future(fut)])

    # -- embeddings ---------------------------------------------------------------

    async def embed(self, request: EmbeddingRequest, model: str, ctx: CallContext) -> JSON:
        """An OpenAI embeddings ``list`` (384 dims; ``dimensions`` truncates + renormalises)."""
        texts = embed_texts(request)
        start = ctx.clock()
        try:
            vecs, counts = await asyncio.get_running_loop().run_in_executor(
                self._emb, self.embedder.embed_with_counts, texts
            )
        finally:
            ctx.upstream_s += ctx.clock() - start
        return embeddings_body(vecs, counts, request, model)

    async def aclose(self) -> None:
        """Stop running generations, join the worker threads and free the models."""
        for run in list(self._runs):
            run.cancel.set()
        await asyncio.to_thread(self._gen.shutdown, True, cancel_futures=True)
        await asyncio.to_thread(self._emb.shutdown, True, cancel_futures=True)
        with self._pool_lock:
            pool, self._pool = self._pool, []
        for llm in pool:
            llm.close()


def _ignore(_: Any) -> None:
    return None


class Run:
    """One generation's shared state: the cancel flag and the token counts."""

    __slots__ = ("cancel", "cancelled", "completion_tokens", "prompt_tokens")

    def __init__(self) -> None:
        self.cancel = threading.Event()
        self.cancelled = False  # the token loop stopped because of ``cancel``
        self.prompt_tokens = 0
        self.completion_tokens = 0

    def usage(self) -> JSON:
        p, c = self.prompt_tokens, self.completion_tokens
        return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}
