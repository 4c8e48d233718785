"""Eval datasets: every format, field mapping, streaming, and file:line errors."""

from __future__ import annotations

import itertools
import json
import re
import tracemalloc
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from bastion.core.errors import InvalidRequest
from bastion.evals.datasets import count_cases, iter_cases
from bastion.evals.suite import Suite


def suite(tmp_path: Path, **dataset: Any) -> Suite:
    return Suite.model_validate(
        {
            "name": "t",
            "target": {"model": "m"},
            "dataset": dataset,
            "scorers": [{"type": "exact"}],
            "base_dir": tmp_path,
        }
    )


def write(tmp_path: Path, name: str, text: str) -> str:
    (tmp_path / name).write_text(text, encoding="utf-8")
    return name


def test_jsonl_rows_map_to_cases(tmp_path: Path) -> None:
    rows = [
        {"id": "a", "input": "2+2?", "expected": "4", "tag": "math"},
        {"input": [{"role": "user", "content": "hi"}], "variables": {"x": 1}},
        {"id": 7, "input": "q", "relevant": {"d1": 2, "d2": 0}, "metadata": {"src": "s"}},
    ]
    path = write(tmp_path, "cases.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n\n")
    cases = list(iter_cases(suite(tmp_path, path=path)))
    assert [c.id for c in cases] == ["a", "2", "7"]
    assert cases[0].input == "2+2?" and cases[0].expected == "4"
    assert cases[0].metadata == {"tag": "math"}
    assert cases[1].input == [{"role": "user", "content": "hi"}]
    assert cases[1].prompt_text() == "hi" and cases[1].variables == {"x": 1}
    assert cases[1].expected is None
    assert cases[2].relevant == {"d1": 2, "d2": 0} and cases[2].metadata == {"src": "s"}
    assert count_cases(suite(tmp_path, path=path)) == 3


def test_field_mapping_and_limit(tmp_path: Path) -> None:
    rows = [{"qid": f"q{i}", "question": f"Q{i}", "answer": i, "docs": [f"d{i}"]} for i in range(5)]
    path = write(tmp_path, "c.jsonl", "\n".join(json.dumps(r) for r in rows))
    s = suite(
        tmp_path,
        path=path,
        id_field="qid",
        input_field="question",
        expected_field="answer",
        relevant_field="docs",
        limit=3,
    )
    cases = list(iter_cases(s))
    assert [(c.id, c.input, c.expected) for c in cases] == [
        ("q0", "Q0", 0),
        ("q1", "Q1", 1),
        ("q2", "Q2", 2),
    ]
    assert cases[1].relevant == {"d1": 1}
    assert cases[0].metadata == {}
    assert count_cases(s) == 3


def test_csv_parses_json_looking_cells(tmp_path: Path) -> None:
    text = (
        "id,input,expected,variables,relevant,note\n"
        'a,"What, exactly?","[""x"", ""y""]","{""name"": ""Ann""}","{""d1"": 2}",first\n'
        "b,plain,[draft],,d1; d2 d3,\n"
        'c,"[{""role"": ""user"", ""content"": ""hello""}]",4,,"[""d9""]",\n'
    )
    path = write(tmp_path, "cases.csv", text)
    a, b, c = iter_cases(suite(tmp_path, path=path))
    assert a.input == "What, exactly?" and a.expected == ["x", "y"]
    assert a.variables == {"name": "Ann"} and a.relevant == {"d1": 2}
    assert a.metadata == {"note": "first"}
    assert b.expected == "[draft]" and b.variables == {} and b.metadata == {}
    assert b.relevant == {"d1": 1, "d2": 1, "d3": 1}
    assert c.input == [{"role": "user", "content": "hello"}] and c.expected == "4"
    assert c.relevant == {"d9": 1}
    assert count_cases(suite(tmp_path, path=path)) == 3


def test_yaml_list_and_mapping(tmp_path: Path) -> None:
    listed = write(tmp_path, "a.yaml", "- input: one\n  expected: 1\n- {id: x, input: two}\n")
    mapped = write(tmp_path, "b.yml", "cases:\n  - input: three\n    refuse: true\n")
    assert [(c.id, c.input, c.expected) for c in iter_cases(suite(tmp_path, path=listed))] == [
        ("1", "one", 1),
        ("x", "two", None),
    ]
    (case,) = iter_cases(suite(tmp_path, path=mapped))
    assert case.input == "three" and case.metadata == {"refuse": True}
    assert count_cases(suite(tmp_path, path=listed)) == 2


def test_inline_cases(tmp_path: Path) -> None:
    s = suite(tmp_path, cases=[{"input": "a"}, {"input": "b", "expected": "B"}])
    assert [(c.id, c.expected) for c in iter_cases(s)] == [("1", None), ("2", "B")]
    assert count_cases(s) == 2


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("cases.jsonl", '{"input": "a"}\n\n{"input": "b"\n', "cases.jsonl:3: invalid JSON"),
        ("cases.jsonl", '{"input": "a"}\n[1, 2]\n', "cases.jsonl:2: expected a JSON object"),
        ("cases.jsonl", '{"input": "a"}\n{"id": 1, "expected": "x"}\n', "missing field 'input'"),
        ("cases.jsonl", '{"id": "a", "input": "x"}\n{"id": "a", "input": "y"}\n', "duplicate id"),
        ("cases.jsonl", '{"input": ""}\n', "cases.jsonl:1: empty input"),
        ("cases.jsonl", '{"input": {"a": 1}}\n', "input must be a string"),
        ("cases.jsonl", '{"input": [{"content": "x"}]}\n', "input message 1"),
        ("cases.jsonl", '{"input": "q", "relevant": {"d": 0.5}}\n', "must be an integer"),
        ("cases.jsonl", '{"input": "q", "variables": [1]}\n', "must be an object"),
        ("cases.csv", "id,question\n1,a\n2,b\n3,c\n", "cases.csv:2: missing column 'input'"),
        ("cases.csv", "id,input\n1,a\n2,b,extra\n", "cases.csv:3: 1 more cells"),
        ("cases.csv", 'input,variables\na,"{bad"\n', "cases.csv:2: column 'variables': invalid"),
        ("cases.yaml", "- input: a\n- 3\n", "cases.yaml:2: a case must be a mapping"),
        ("cases.yaml", "- input: a\n  expected: [\n", "cases.yaml:3: invalid YAML"),
        ("cases.yaml", "name: x\n", "cases.yaml:1: expected a list of cases"),
        ("cases.txt", "x\n", "unsupported dataset format '.txt'"),
    ],
)
def test_malformed_rows_name_file_and_line(
    tmp_path: Path, name: str, text: str, message: str
) -> None:
    path = write(tmp_path, name, text)
    with pytest.raises(InvalidRequest, match=re.escape(message)):
        list(iter_cases(suite(tmp_path, path=path)))


def test_duplicate_id_names_first_line(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "d.jsonl",
        '{"id": "a", "input": "x"}\n{"input": "y"}\n{"id": "a", "input": "z"}\n',
    )
    with pytest.raises(InvalidRequest, match=r"d\.jsonl:3: duplicate id 'a' \(first at line 1\)"):
        list(iter_cases(suite(tmp_path, path=path)))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest, match="dataset file not found"):
        list(iter_cases(suite(tmp_path, path="nope.jsonl")))


def test_limit_stops_before_a_bad_row(tmp_path: Path) -> None:
    path = write(tmp_path, "c.jsonl", '{"input": "a"}\n{"input": "b"}\nnot json\n')
    assert [c.input for c in iter_cases(suite(tmp_path, path=path, limit=2))] == ["a", "b"]


def test_large_jsonl_is_streamed(tmp_path: Path) -> None:
    path = tmp_path / "big.jsonl"
    filler = "x" * 200
    with path.open("w", encoding="utf-8") as handle:
        for i in range(50_000):
            handle.write(json.dumps({"id": f"c{i}", "input": f"question {i} {filler}"}) + "\n")
    assert path.stat().st_size > 10_000_000
    s = suite(tmp_path, path="big.jsonl")
    tracemalloc.start()
    try:
        with closing(iter_cases(s)) as cases:
            first = list(itertools.islice(cases, 100))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [c.id for c in first[:2]] == ["c0", "c1"] and len(first) == 100
    assert peak < 1_000_000, f"peak {peak} bytes: the file was not streamed"
    assert count_cases(s) == 50_000


def test_prompt_targets_need_no_input_of_their_own(tmp_path: Path) -> None:
    rows = '{"id": "a", "variables": {"name": "Ada"}, "expected": "Ada"}\n'
    path = write(tmp_path, "p.jsonl", rows)
    prompt_suite = Suite.model_validate(
        {
            "name": "t",
            "target": {"prompt": "greet@production"},
            "dataset": {"path": path},
            "scorers": [{"type": "contains"}],
            "base_dir": tmp_path,
        }
    )
    (case,) = list(iter_cases(prompt_suite))
    assert case.input == [] and case.variables == {"name": "Ada"}
    # a model target still needs the question
    with pytest.raises(InvalidRequest, match=r"p\.jsonl:1: missing field 'input'"):
        list(iter_cases(suite(tmp_path, path=path)))
