"""Eval scorers: known passes and failures, error paths, and no NaN ever."""

from __future__ import annotations

import math
from typing import Any, get_args

import pytest

from bastion.core.errors import InvalidRequest
from bastion.evals.scorers import (
    BaseScorer,
    aggregate_on,
    build_scorer,
    first_number,
    higher_is_better,
    threshold_met,
)
from bastion.evals.suite import ScorerSpec, ScorerType
from bastion.evals.types import Case, Output, Score


def spec(type_: str, **options: Any) -> ScorerSpec:
    return ScorerSpec.model_validate({"type": type_, **options})


def case(expected: Any = None, question: str = "What is the capital of France?", **kw: Any) -> Case:
    return Case(id="c1", input=question, expected=expected, **kw)


async def score(s: ScorerSpec | str, c: Case, o: Output | str) -> Score:
    scorer = build_scorer(spec(s) if isinstance(s, str) else s)
    result = await scorer.score(c, Output(text=o) if isinstance(o, str) else o)
    assert result.scorer == scorer.name
    return result


def ok(result: Score) -> None:
    assert result.error is None and result.value == 1.0 and result.passed is True, result


def no(result: Score) -> None:
    assert result.error is None and result.value == 0.0 and result.passed is False, result


def failed(result: Score, message: str) -> None:
    assert result.value is None and result.passed is None, result
    assert result.error is not None and message in result.error, result.error


async def test_exact() -> None:
    ok(await score("exact", case("Paris"), "  paris \n"))
    ok(await score("exact", case(["Paris", "Paris, France"]), "Paris,   France"))
    no(await score("exact", case("Paris"), "Paris."))
    no(await score(spec("exact", case_sensitive=True), case("Paris"), "paris"))
    ok(await score("exact", case(4), "4"))
    failed(await score("exact", case(None), "Paris"), "no expected answer")
    failed(await score("exact", case([]), "Paris"), "empty list")


async def test_contains_needs_all() -> None:
    ok(await score("contains", case(["paris", "FRANCE"]), "Paris is in France."))
    result = await score("contains", case(["paris", "Lyon"]), "Paris is in France.")
    no(result)
    assert result.details["missing"] == ["Lyon"]
    no(await score(spec("contains", case_sensitive=True), case("paris"), "Paris"))


async def test_regex() -> None:
    s = spec("regex", pattern=r"\b\d{3}-\d{4}\b")
    ok(await score(s, case(), "call 555-1234 now"))
    no(await score(s, case(), "call me"))
    with pytest.raises(InvalidRequest, match="scorer 'phone': invalid pattern"):
        build_scorer(spec("regex", name="phone", pattern="(unclosed"))


@pytest.mark.parametrize(
    ("text", "number"),
    [
        ("The total is 1,234.5 dollars", 1234.5),
        ("It fell by -3e2 units", -300.0),
        ("about .5 of it", 0.5),
        ("x = \u221242", -42.0),
        ("version2 then 7", 7.0),
        ("1,2345", 1.0),
        ("nothing", None),
        ("inf and nan then 1e999", None),
    ],
)
def test_first_number(text: str, number: float | None) -> None:
    assert first_number(text) == number


async def test_numeric() -> None:
    ok(await score("numeric", case(1234.5), "It costs $1,234.50."))
    ok(await score("numeric", case("1,000"), "1000"))
    no(await score("numeric", case(10), "11"))
    ok(await score(spec("numeric", tolerance=1), case(10), "11"))
    ok(await score(spec("numeric", tolerance=0.05, relative=True), case(200), "209"))
    no(await score(spec("numeric", tolerance=0.05, relative=True), case(200), "211"))
    result = await score("numeric", case(3), "three")
    no(result)
    assert result.explanation == "no number in the output"
    failed(await score("numeric", case("many"), "3"), "expected is not a number")
    failed(await score("numeric", case(True), "1"), "expected is not a number")


SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0}},
    "required": ["name", "age"],
}


async def test_json_schema() -> None:
    s = spec("json_schema", schema=SCHEMA)
    ok(await score(s, case(), '{"name": "Ann", "age": 3}'))
    ok(await score(s, case(), 'Here:\n```json\n{"name": "Ann", "age": 3}\n```\n'))
    bad = await score(s, case(), '{"name": "Ann", "age": -1}')
    no(bad)
    assert bad.explanation is not None and "$.age" in bad.explanation
    not_json = await score(s, case(), "Ann is three")
    no(not_json)  # a wrong answer, not an error
    assert not_json.explanation is not None and "not JSON" in not_json.explanation
    with pytest.raises(InvalidRequest, match="invalid schema"):
        build_scorer(spec("json_schema", schema={"type": "nonsense"}))
    with pytest.raises(InvalidRequest, match="needs schema"):
        build_scorer(spec("json_schema"))


async def test_target_error_is_a_scorer_error() -> None:
    broken = Output(error="upstream_timeout: took too long", latency_s=2.0)
    for kind in ("exact", "contains", "numeric", "refusal", "answer_relevance"):
        failed(await score(kind, case("Paris"), broken), "target error: upstream_timeout")
    # latency and cost still measure a failed call that has the number
    latency = await score(spec("latency", max_s=1), case(), broken)
    assert latency.value == 2.0 and latency.passed is False
    failed(await score("latency", case(), Output(error="refused")), "target error")
    failed(await score("cost", case(), broken), "target error")
    billed = await score("cost", case(), Output(error="x", cost_usd=0.01))
    assert billed.value == 0.01


async def test_crash_becomes_an_error() -> None:
    class Boom(BaseScorer):
        async def _score(self, case: Case, output: Output) -> Score:
            raise RuntimeError("boom")

    failed(
        await Boom(spec("exact", name="boom")).score(case(), Output(text="x")), "RuntimeError: boom"
    )
    # a real scorer fed an output it cannot read
    failed(await score("answer_relevance", case(), Output(text=None)), "AttributeError")  # type: ignore[arg-type]
    failed(await score("latency", case(), Output(latency_s=math.nan)), "ValueError")


RETRIEVED = [{"document_id": d, "text": f"text of {d}"} for d in ("d3", "d1", "d3", "d2", "d5")]
QRELS = {"d1": 2, "d2": 1, "d4": 1}


async def test_retrieval_metrics_by_hand() -> None:
    c = case(relevant=QRELS)
    out = Output(retrieved=RETRIEVED)
    # ranking after dedupe: d3, d1, d2, d5; top 3 holds d1 (grade 2) at 2 and d2 (grade 1) at 3
    recall = await score(spec("recall_at_k", k=3), c, out)
    assert recall.value == pytest.approx(2 / 3) and recall.passed is None
    mrr = await score(spec("mrr", k=3, threshold=0.5), c, out)
    assert mrr.value == pytest.approx(0.5) and mrr.passed is True
    assert (await score(spec("mrr", k=1), c, out)).value == 0.0
    ndcg = await score(spec("ndcg", k=3), c, out)
    dcg = 2 / math.log2(3) + 1 / math.log2(4)
    ideal = 2 / math.log2(2) + 1 / math.log2(3) + 1 / math.log2(4)
    assert ndcg.value == pytest.approx(dcg / ideal)
    assert (await score("recall_at_k", c, Output())).value == 0.0
    failed(await score("ndcg", case(), out), "no relevance judgements")
    failed(await score("mrr", case(relevant={"d1": 0}), out), "no relevance judgements")


def citation(
    doc: str, support: float | None = None, supported: bool | None = None
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "source": 1,
        "chunk_id": f"{doc}#0",
        "document_id": doc,
        "kind": "explicit",
    }
    if support is not None:
        out["support"] = support
    if supported is not None:
        out["supported"] = supported
    return out


async def test_citations() -> None:
    cites = [citation("d1", 0.9, True), citation("d2", 0.2, False), citation("d9", 0.8, True)]
    out = Output(text="Answer [1][2].", citations=cites)
    assert (await score("citations", case(), out)).value == pytest.approx(2 / 3)
    judged = await score("citations", case(relevant={"d1": 1, "d2": 1}), out)
    assert judged.value == pytest.approx(1 / 3)
    assert judged.details["off_target"] == 1 and judged.details["unsupported"] == 1
    strict = await score(spec("citations", min_support=0.85), case(), out)
    assert strict.value == pytest.approx(1 / 3)
    flags = Output(
        text="a", citations=[citation("d1", supported=True), citation("d2", supported=False)]
    )
    assert (await score("citations", case(), flags)).value == 0.5
    none = await score("citations", case(), Output(text="An answer."))
    assert none.value == 0.0 and none.explanation == "the answer cites nothing"
    failed(await score("citations", case(), Output(text=" ")), "no answer")
    failed(
        await score("citations", case(), Output(text="a", citations=[{"document_id": "d"}])),
        "neither",
    )


async def test_groundedness_uses_bastion_report() -> None:
    grounding = {
        "sentences": [
            {"text": "Paris is the capital.", "supported": True, "sources": [1]},
            {"text": "It has ten million cats.", "supported": False, "sources": []},
        ],
        "unsupported": 1,
    }
    result = await score("groundedness", case(), Output(text="whatever", grounding=grounding))
    assert result.value == 0.5 and result.details == {
        "claims": 2,
        "unsupported": 1,
        "via": "bastion",
    }
    assert result.explanation is not None and "cats" in result.explanation


async def test_groundedness_computed_from_retrieved() -> None:
    retrieved = [
        {
            "document_id": "d1",
            "text": "Paris is the capital city of France since the tenth century.",
        },
        {"document_id": "d2", "text": "Lyon hosts famous silk weaving workshops."},
    ]
    answer = (
        "Paris became the capital city of France [2]. Lyon hosts silk weaving workshops. "
        "Bananas grow on tall purple trees."
    )
    result = await score("groundedness", case(), Output(text=answer, retrieved=retrieved))
    # marks are ignored: each claim is checked against its best chunk; the third is unsupported
    assert result.value == pytest.approx(2 / 3) and result.details["via"] == "computed"
    assert result.details["claims"] == 3
    short = await score("groundedness", case(), Output(text="Yes.", retrieved=retrieved))
    assert short.value == 1.0 and short.details["claims"] == 0
    failed(
        await score("groundedness", case(), Output(text="Paris is big.")), "no retrieved context"
    )


async def test_answer_relevance() -> None:
    q = case(question="What is the capital of France?")
    ok_ = await score(spec("answer_relevance", threshold=0.9), q, "The capital of France is Paris.")
    assert ok_.value == 1.0 and ok_.passed is True
    half = await score("answer_relevance", q, "Its capital is Paris.")
    assert half.value == 0.5 and half.explanation is not None and "franc" in half.explanation
    failed(await score("answer_relevance", case(question="Is it?"), "yes"), "no content terms")


@pytest.mark.parametrize(
    "text",
    [
        "I can't help with that.",
        "I'm sorry, but I cannot assist with this request.",
        "As an AI, I must decline.",
        "I won't provide instructions for that.",
        "Lo siento, pero no puedo ayudarte con eso.",
        "Je suis désolé, mais je ne peux pas vous aider.",
        "Es tut mir leid, aber dabei kann ich nicht helfen.",
    ],
)
async def test_refusal_detected(text: str) -> None:
    result = await score("refusal", case(), text)
    assert result.value == 1.0 and result.passed is None and result.details["refused"] is True


async def test_refusal_against_expectation() -> None:
    answer = "Sure. I cannot stress this enough: the capital of France is Paris."
    complied = await score("refusal", case(), answer)
    assert complied.value == 0.0 and complied.details["refused"] is False
    ok(await score("refusal", case(True), "I cannot help with that."))
    no(await score("refusal", case("yes"), answer))
    tools = "Tools such as an AI assistant can help you draft it. Start with an outline."
    no(await score("refusal", case(True), tools))
    ok(await score("refusal", case(True), "Sorry. As an AI model I do not do that."))
    ok(await score("refusal", case(False), answer))
    result = await score("refusal", case(False), "I'm sorry, but I can't do that.")
    no(result)
    assert result.explanation == "refused but should have answered"
    ok(await score("refusal", case(True), Output(text="", finish_reason="content_filter")))
    failed(await score("refusal", case("maybe"), answer), "expected must be true or false")


async def test_latency_and_cost() -> None:
    fast = await score(spec("latency", max_s=1.0), case(), Output(text="x", latency_s=0.25))
    assert fast.value == 0.25 and fast.passed is True
    slow = await score(spec("latency", max_s=1.0), case(), Output(text="x", latency_s=1.5))
    assert slow.value == 1.5 and slow.passed is False
    assert (await score("latency", case(), Output(latency_s=0.3))).passed is None
    cheap = await score(spec("cost", max_usd=0.01), case(), Output(text="x", cost_usd=0.002))
    assert cheap.value == 0.002 and cheap.passed is True
    failed(await score("cost", case(), Output(text="x")), "cost unknown")


def test_threshold_semantics() -> None:
    assert higher_is_better(spec("exact")) and not higher_is_better(spec("latency"))
    assert aggregate_on(spec("exact")) == "mean"
    assert aggregate_on(spec("latency", max_s=2)) == "pass_rate"
    assert aggregate_on(spec("cost")) == "mean"
    assert threshold_met(spec("exact"), 0.5) is None
    assert threshold_met(spec("exact", threshold=0.8), 0.9) is True
    assert threshold_met(spec("exact", threshold=0.8), 0.7) is False
    assert threshold_met(spec("latency", max_s=2, threshold=0.95), 0.97) is True
    assert threshold_met(spec("latency", threshold=1.5), 1.2) is True  # mean seconds, at most
    assert threshold_met(spec("cost", threshold=0.01), 0.02) is False


def test_judge_needs_a_client() -> None:
    with pytest.raises(InvalidRequest, match="needs a model client"):
        build_scorer(spec("judge", model="judge", rubric="polite"))


ALL_TYPES = [t for t in get_args(ScorerType) if t != "judge"]
OPTIONS: dict[str, dict[str, Any]] = {
    "regex": {"pattern": "a"},
    "json_schema": {"schema": SCHEMA},
    "latency": {"max_s": 1},
    "cost": {"max_usd": 1},
}
ODD_OUTPUTS = [
    Output(text="An answer with 1e999 and nan.", latency_s=0.1, cost_usd=0.0),
    Output(text="", latency_s=math.inf, cost_usd=math.nan),
    Output(text="x", error="boom", latency_s=math.nan, cost_usd=-math.inf),
    Output(
        text="x [1]",
        retrieved=[{"document_id": None}, {"text": ""}, "junk"],  # type: ignore[list-item]
        citations=[{"document_id": "d1", "support": math.nan}],
        grounding={"sentences": "no"},
    ),
]
ODD_CASES = [
    case(None),
    case(["a", 3], relevant={"d1": 1}),
    Case(id="m", input=[{"role": "system", "content": "s"}], expected=math.inf),
]


async def test_no_value_is_ever_nan() -> None:
    for type_ in ALL_TYPES:
        scorer = build_scorer(spec(type_, **OPTIONS.get(type_, {})))
        for c in ODD_CASES:
            for o in ODD_OUTPUTS:
                s = await scorer.score(c, o)
                assert s.value is None or math.isfinite(s.value), (type_, s)
                assert (s.value is None) == (s.error is not None), (type_, s)
