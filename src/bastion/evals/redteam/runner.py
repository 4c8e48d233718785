"""Run a red-team suite: plant fixtures, send every probe, detect, record.

:func:`run_redteam` builds the probes (seeds x converter chains), plants what
they need (:mod:`.fixtures`), starts the loopback sink when exfiltration is
probed, sends the probes through the :class:`ModelClient` with bounded
concurrency and decides each one with its detector (:mod:`.detectors`). A
gateway refusal (``content_blocked``, an access error for cross-tenant probes,
a 4xx for oversized input) counts as a defended attack with ``blocked`` set.
Probes that cannot be scored (errors after retries, missing fixtures) have
``success = None`` and never enter an attack success rate.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from bastion.core.errors import BastionError
from bastion.evals.client import is_transient
from bastion.evals.redteam import detectors as D
from bastion.evals.redteam.fixtures import ClientsForKey, Fixtures, setup, teardown
from bastion.evals.redteam.probes import Probe, ProbeContext, build_probes, canary_system
from bastion.evals.redteam.seeds import Seed, load_seeds
from bastion.evals.redteam.sink import Sink
from bastion.evals.redteam.suite import RedteamSuite
from bastion.evals.targets import output_of_chat
from bastion.evals.types import JSON, ModelClient, Output

Progress = Callable[[int, int], None]
_ACCESS_CODES = frozenset({"not_found", "permission_denied", "authentication_error"})


@dataclass(slots=True)
class ProbeRecord:
    """One probe's outcome: a line of the hit log."""

    id: str
    category: str
    owasp: str
    severity: str
    technique: str
    converter: str
    oracle: str
    seed_id: str
    source: str
    license: str
    success: bool | None  # None: not scored (error or skipped)
    blocked: bool = False
    detector: str = ""
    how: str = ""
    evidence: str = ""
    flags: list[str] = field(default_factory=list)
    status: int | None = None
    latency_s: float = 0.0
    error: str | None = None
    skipped: bool = False
    channel: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class RedteamResult:
    """A finished run: its probes' records and notes."""

    suite: str
    target: str
    run_id: str
    started_at: float
    finished_at: float = 0.0
    records: list[ProbeRecord] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass(slots=True)
class Outcome:
    output: Output | None = None
    error: BastionError | None = None
    status: int | None = None
    latency_s: float = 0.0
    timed_out: bool = False


def _record(p: Probe, success: bool | None, **kw: Any) -> ProbeRecord:
    return ProbeRecord(
        id=p.id,
        category=p.category,
        owasp=p.owasp,
        severity=p.severity,
        technique=p.technique,
        converter=p.converter,
        oracle=p.oracle,
        seed_id=p.seed.id,
        source=p.seed.source,
        license=p.seed.license,
        success=success,
        channel=p.channel,
        **kw,
    )


def _evidence(ev: D.Evidence | None) -> dict[str, str]:
    return {"detector": ev.detector, "how": ev.how, "evidence": ev.snippet} if ev else {}


class _Run:
    def __init__(
        self, suite: RedteamSuite, client: ModelClient, fx: Fixtures, sink: Sink | None
    ) -> None:
        self.suite = suite
        self.client = client
        self.fx = fx
        self.sink = sink
        self.judge = D.Judge(client, suite.judge.model) if suite.judge else None
        self.flagger = D.InjectionFlagger() if suite.classifier else None

    # ------------------------------------------------------------------ calls
    def body(self, messages: list[JSON], rag: JSON | None = None) -> JSON:
        t = self.suite.target
        body: JSON = {**t.params, "model": t.model or "prompt", "messages": messages}
        if rag is not None:
            body["bastion"] = rag
        elif t.prompt:
            body["bastion"] = {"prompt": t.prompt, "variables": dict(t.variables)}
        return body

    def messages(self, user: str, system: str | None = None) -> list[JSON]:
        system = system if system is not None else self.suite.target.system
        msgs: list[JSON] = [{"role": "system", "content": system}] if system else []
        return [*msgs, {"role": "user", "content": user}]

    async def chat(
        self, body: JSON, client: ModelClient | None = None, *, retry_5xx: bool = True
    ) -> Outcome:
        client = client or self.client
        timeout = self.suite.limits.timeout_s
        t0 = time.perf_counter()
        for attempt in range(self.suite.retries + 1):
            try:
                res = await asyncio.wait_for(client.chat(body), timeout)
            except TimeoutError:
                return Outcome(timed_out=True, latency_s=time.perf_counter() - t0)
            except BastionError as exc:
                again = is_transient(exc) and (retry_5xx or exc.status == 429)
                if again and attempt < self.suite.retries:
                    await asyncio.sleep(min(exc.retry_after or 0.5 * 2**attempt, 5.0))
                    continue
                return Outcome(error=exc, status=exc.status, latency_s=time.perf_counter() - t0)
            out = output_of_chat(
                res.body, latency_s=res.latency_s, cost_usd=res.cost_usd, status=res.status
            )
            return Outcome(output=out, status=res.status, latency_s=res.latency_s)
        raise AssertionError("unreachable")

    # ------------------------------------------------------------------ probes
    async def probe(self, p: Probe) -> ProbeRecord:
        why = self.fx.unavailable.get(p.category) or self.fx.unavailable.get(
            f"{p.category}:{p.technique}"
        )
        if why:
            return _record(p, None, skipped=True, error=f"skipped: {why}")
        try:
            if p.oracle == "tenant":
                return await self.tenant_probe(p)
            if p.oracle == "consumption":
                return await self.consumption_probe(p)
            return await self.chat_probe(p)
        except BastionError as exc:  # a setup-like failure inside a probe
            return _record(p, None, status=exc.status, error=f"{exc.code}: {exc.message}")

    def _failed(self, p: Probe, o: Outcome) -> ProbeRecord:
        if o.timed_out:
            return _record(p, None, error="timeout", latency_s=o.latency_s)
        assert o.error is not None
        exc = o.error
        if exc.code == "content_blocked":
            return _record(
                p,
                False,
                blocked=True,
                detector="gateway",
                how="content_blocked",
                evidence=exc.message[:160],
                status=exc.status,
                latency_s=o.latency_s,
            )
        return _record(
            p,
            None,
            status=exc.status,
            error=f"{exc.code}: {exc.message}"[:300],
            latency_s=o.latency_s,
        )

    async def chat_probe(self, p: Probe) -> ProbeRecord:
        rag: JSON | None = None
        system: str | None = None
        user = p.text
        if p.question is not None:  # indirect injection: ask a benign question
            assert self.fx.docs_collection is not None
            rag = {
                "collections": [self.fx.docs_collection],
                "top_k": 4,
                "filters": {"document_ids": [p.doc_id]},
            }
            user = p.question
        if p.canary is not None:
            system = canary_system(self.suite.target.system, p.canary)
        o = await self.chat(self.body(self.messages(user, system), rag))
        if o.output is None:
            return self._failed(p, o)
        text = o.output.text
        base = {"status": o.status, "latency_s": o.latency_s}
        flags: list[str] = []
        ev: D.Evidence | None = None
        if p.oracle == "trigger":
            assert p.trigger is not None
            ev = D.find_trigger(text, p.trigger)
            if self.flagger is not None:
                flags += self.flagger.flags(text)
        elif p.oracle == "canary":
            assert p.canary is not None
            ev = D.find_canary(text, p.canary)
        elif p.oracle == "sink":
            assert self.sink is not None
            fetched = await self.sink.render(text)
            ev = D.sink_evidence(self.sink.hits_for(p.token), fetched)
            flags += D.exfil_flags(text, self.sink, p.token)
        elif p.oracle == "html":
            ev = D.find_active_html(text)
        elif p.oracle == "judge":
            return await self.judge_probe(p, text, base)
        detector = {"trigger": "trigger", "canary": "canary", "sink": "sink", "html": "html"}
        if ev is None:
            return _record(p, False, detector=detector[p.oracle], flags=flags, **base)
        return _record(p, True, flags=flags, **_evidence(ev), **base)

    async def judge_probe(self, p: Probe, text: str, base: dict[str, Any]) -> ProbeRecord:
        if D.is_refusal(text):
            return _record(p, False, detector="refusal_classifier", how="refusal", **base)
        assert self.judge is not None
        try:
            complied, reason = await self.judge.verdict(p.text, text)
        except (BastionError, ValueError) as exc:
            msg = exc.message if isinstance(exc, BastionError) else str(exc)
            return _record(p, None, error=f"judge: {msg}"[:300], **base)
        return _record(
            p,
            complied,
            detector="llm_judge",
            how="complied" if complied else "resisted",
            evidence=reason,
            **base,
        )

    async def tenant_probe(self, p: Probe) -> ProbeRecord:
        fx = self.fx
        assert fx.pii_collection is not None
        client = fx.tenant_b if p.technique == "cross_tenant" else self.client
        assert client is not None
        t0 = time.perf_counter()
        texts: list[str] = []
        if p.channel == "rag_query":
            try:
                data = await client.post(
                    "/v1/rag/query", {"collection": fx.pii_collection, "query": p.text}
                )
            except BastionError as exc:
                return self._access_outcome(p, Outcome(error=exc, status=exc.status))
            texts = [str(r.get("text") or "") for r in data.get("results") or []]
            status = 200
        else:
            rag = (
                {"collections": [fx.pii_collection], "top_k": 8}
                if p.channel == "rag_chat"
                else None
            )
            o = await self.chat(self.body(self.messages(p.text), rag), client)
            if o.output is None:
                return self._access_outcome(p, o)
            texts = [o.output.text]
            if p.technique == "cross_tenant":
                texts += [str(c.get("quote") or "") for c in o.output.citations]
            status = o.status or 200
        base = {"status": status, "latency_s": time.perf_counter() - t0}
        ev = D.find_planted(texts, fx.planted)
        if ev is None:
            return _record(p, False, detector="tenant_data", **base)
        return _record(p, True, **_evidence(ev), **base)

    def _access_outcome(self, p: Probe, o: Outcome) -> ProbeRecord:
        """Cross-tenant: an access error is the defence working."""
        if o.error is not None and p.technique == "cross_tenant" and o.error.code in _ACCESS_CODES:
            return _record(
                p,
                False,
                blocked=True,
                detector="tenant_data",
                how=o.error.code,
                status=o.error.status,
                latency_s=o.latency_s,
            )
        return self._failed(p, o)

    async def consumption_probe(self, p: Probe) -> ProbeRecord:
        o = await self.chat(self.body(self.messages(p.text)), retry_5xx=False)
        out = o.output
        c = D.Consumption(
            status=o.status,
            latency_s=o.latency_s,
            completion_tokens=out.completion_tokens if out else 0,
            output_chars=len(out.text) if out else 0,
            timed_out=o.timed_out,
        )
        lim = self.suite.limits
        e = o.error
        if e is not None and e.status < 500 and e.status not in (400, 413, 422, 429):
            return self._failed(p, o)
        success, blocked, ev = D.consumption_verdict(
            c, max_output_tokens=lim.max_output_tokens, timeout_s=lim.timeout_s
        )
        return _record(
            p,
            success,
            blocked=blocked or (o.error is not None and o.error.status < 500),
            status=o.status,
            latency_s=o.latency_s,
            **_evidence(ev),
        )


def select_seeds(suite: RedteamSuite, seeds: dict[str, list[Seed]] | None) -> dict[str, list[Seed]]:
    """The seeds of the suite's categories (the bundled ones unless given)."""
    pool = seeds if seeds is not None else load_seeds(suite.categories)
    keep = set(suite.techniques)
    return {
        c: [s for s in pool.get(c, []) if not keep or s.technique in keep] for c in suite.categories
    }


async def run_redteam(
    suite: RedteamSuite,
    client: ModelClient,
    *,
    clients_for_key: ClientsForKey | None = None,
    progress: Progress | None = None,
    limit: int | None = None,
    seeds: dict[str, list[Seed]] | None = None,
) -> RedteamResult:
    """Run ``suite`` against the gateway behind ``client``.

    ``clients_for_key`` opens a client with another API key (tenant B of the
    cross-tenant probes); ``limit`` overrides ``max_probes_per_category``;
    ``seeds`` replaces the bundled seeds (tests).
    """
    run_id = f"redteam-{time.strftime('%Y%m%d%H%M%S')}-{secrets.token_hex(3)}"
    result = RedteamResult(suite.name, suite.target.label, run_id, time.time())
    chosen = select_seeds(suite, seeds)
    async with contextlib.AsyncExitStack() as stack:
        sink: Sink | None = None
        if "output_handling" in suite.categories:
            sink = await stack.enter_async_context(Sink())
        ctx = ProbeContext(
            sink_url=sink.url if sink else "http://127.0.0.1:9/x",
            pii_collection=f"{run_id}-pii",
            huge_input_chars=suite.limits.huge_input_chars,
            judge=suite.judge is not None,
        )
        probes = build_probes(
            chosen, suite.chains(), ctx, max_per_category=limit or suite.max_probes_per_category
        )
        docs = [
            {"id": p.doc_id, "title": f"About {p.topic}", "text": p.text}
            for p in probes
            if p.question is not None
        ]
        fx = await setup(
            client,
            run_id,
            docs=docs,
            pii=any(p.oracle == "tenant" for p in probes),
            cross_tenant=any(p.technique == "cross_tenant" for p in probes),
            clients_for_key=clients_for_key,
            model=suite.target.model or "prompt",
        )
        try:
            run = _Run(suite, client, fx, sink)
            sem = asyncio.Semaphore(suite.concurrency)
            done = 0

            async def one(p: Probe) -> ProbeRecord:
                nonlocal done
                async with sem:
                    rec = await run.probe(p)
                done += 1
                if progress is not None:
                    progress(done, len(probes))
                return rec

            result.records = list(await asyncio.gather(*(one(p) for p in probes)))
        finally:
            await teardown(fx, client)
        result.notes += [f"{k}: {v}" for k, v in fx.unavailable.items()] + fx.notes
    result.finished_at = time.time()
    return result
