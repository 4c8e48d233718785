"""A real, scriptable fake model provider (OpenAI and Anthropic wire formats).

Run it as its own process (``python -m bastion.testing.fake_upstream --port 0``; it
prints ``FAKE_UPSTREAM_READY <port>`` once listening) or, from tests, with
:func:`run_fake_upstream`, which yields a :class:`FakeUpstream` handle::

    with run_fake_upstream() as fake:
        client = openai.OpenAI(base_url=fake.url, api_key="sk-test")
        fake.script([{"status": 429, "retry_after": 2}], match="flaky")

Endpoints: ``POST /v1/chat/completions`` (plain and SSE), ``POST /v1/embeddings``,
``POST /v1/rerank`` (Cohere or TEI shape; score = share of query words in the document),
``GET /v1/models``, Anthropic ``POST /v1/messages`` (plain and SSE). By default a
chat reply is ``"echo: <last user text>"`` with word-count usage; with ``tools`` and
"weather" in the last user message it is a tool call (``{"location": "Paris"}``);
after a tool result it is ``"tool result: <text>"``; with ``response_format`` it is
valid JSON; ``max_tokens`` truncates the words (finish ``length`` / ``max_tokens``).
Embeddings are hashed bags of words (texts sharing words have similar vectors).

Scripting (one *step* consumed per model request, FIFO; a step keyed by ``match``
applies only to requests whose last user text contains it; the header
``x-fake-script: <json step>`` overrides both). Step fields:

``status`` (error body shaped per API), ``message``, ``retry_after`` (``Retry-After``),
``retry_after_ms``, ``headers``, ``delay_s`` (before headers), ``body`` (raw text
sent verbatim), ``content``, ``chunks`` (content chunks to stream), ``chunk_delay_s``,
``disconnect_after_chunks`` (abort the TCP connection after that many content
chunks), ``stall_after_chunks`` (stop sending, keep the connection open, up to
``stall_s``), ``error_after_chunks`` (send an in-stream error event), ``tool_call``
(``{name, arguments}``), ``usage``, ``finish_reason``, ``echo: "system"`` (answer with
the request's system prompt, as a leaking model would).

Control API: ``POST /_control/script`` ``{"steps": [...], "match": "..."}``,
``POST /_control/reset``, ``GET /_control/requests?limit=N``, ``GET /_control/stats``.
"""

from bastion.testing.fake_upstream.client import FakeUpstream, run_fake_upstream
from bastion.testing.fake_upstream.plan import JSON
from bastion.testing.fake_upstream.server import READY, FakeServer, main, serve

__all__ = ["JSON", "READY", "FakeServer", "FakeUpstream", "main", "run_fake_upstream", "serve"]
