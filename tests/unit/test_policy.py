"""The policy file: schema, cross references, file:line errors, `bastion check`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bastion.config.defaults import embedded_policy
from bastion.config.loader import load_policy, parse_policy
from bastion.core.errors import PolicyError

GOOD = """\
providers:
  openai: {type: openai, api_key: env:OPENAI_API_KEY}
  vllm: {type: openai, base_url: "http://gpu-box:8000/v1"}
  local: {type: local}
models:
  chat-default:
    routes:
      - {provider: openai, model: gpt-4o-mini, weight: 90}
      - {provider: vllm, model: qwen2.5-7b, weight: 10}
    fallbacks: [local]
    timeout_s: 30
    retries: {attempts: 2, backoff: exponential}
  embed:
    type: embedding
    routes: [{provider: local, model: all-minilm-l6-v2}]
keys:
  ci: {secret: env:CI_KEY, models: [chat-default]}
"""


def problems(text: str) -> list[tuple[int, str]]:
    with pytest.raises(PolicyError) as info:
        parse_policy(text, "p.yaml")
    assert all(f == "p.yaml" for f, _, _ in info.value.problems)
    return [(line, reason) for _, line, reason in info.value.problems]


def test_good_policy_parses() -> None:
    policy = parse_policy(GOOD)
    assert policy.models["chat-default"].routes[0].weight == 90
    assert policy.models["chat-default"].timeout_s == 30
    assert policy.keys["ci"].models == ["chat-default"]


def test_embedded_defaults_are_a_valid_policy() -> None:
    policy = embedded_policy()
    assert set(policy.models) == {"local-chat", "local-embed"}
    parse_policy(policy.model_dump_json())  # JSON is YAML: round-trips through the loader


def test_unknown_field_is_reported_on_its_line() -> None:
    text = GOOD.replace("weight: 10}", "wieght: 10}")
    assert problems(text) == [(9, "models.chat-default.routes.1.wieght: unknown field 'wieght'")]


def test_literal_secret_is_refused() -> None:
    text = GOOD.replace("api_key: env:OPENAI_API_KEY", "api_key: sk-live-123")
    [(line, reason)] = problems(text)
    assert line == 2 and "providers.openai.api_key" in reason and "env:NAME" in reason
    assert "sk-live-123" not in reason


def test_secret_in_headers_is_refused() -> None:
    text = GOOD.replace(
        'base_url: "http://gpu-box:8000/v1"}',
        'base_url: "http://x/v1", headers: {Authorization: "Bearer x"}}',
    )
    [(line, reason)] = problems(text)
    assert line == 3 and "carries a secret" in reason


def test_every_problem_is_reported_with_its_line() -> None:
    text = """\
providers:
  local: {type: local}
models:
  chat:
    routes: [{provider: nope}]
    fallbacks: [local, other]
    retries: {attempts: 1}
keys:
  k1: {secret: env:K1, models: [chat, missing]}
"""
    assert problems(text) == [
        (5, "models.chat.routes.0.provider: unknown provider 'nope'"),
        (6, "models.chat.fallbacks.1: 'other' is neither a model nor a provider"),
        (9, "keys.k1.models.1: unknown model 'missing'"),
    ]


def test_wrong_types_and_ranges() -> None:
    text = GOOD.replace("attempts: 2", "attempts: -1").replace("timeout_s: 30", "timeout_s: soon")
    found = problems(text)
    assert (
        11,
        "models.chat-default.timeout_s: Input should be a valid number, "
        "unable to parse string as a number",
    ) in found
    assert any(line == 12 and "retries.attempts" in r for line, r in found)


def test_fallback_cycle_and_type_mismatch() -> None:
    text = """\
providers:
  p: {type: fake}
models:
  a: {routes: [{provider: p, model: x}], fallbacks: [b]}
  b: {routes: [{provider: p, model: y}], fallbacks: [a]}
  e: {type: embedding, routes: [{provider: p, model: z}], fallbacks: [a]}
"""
    found = problems(text)
    assert (4, "models.a.fallbacks: fallback chain loops back to this model") in found
    assert (6, "models.e.fallbacks.0: fallback 'a' is a model of type chat, not embedding") in found


def test_yaml_syntax_error_has_a_line() -> None:
    [(line, reason)] = problems("providers:\n  a: {type: openai\nmodels: {}\n")
    assert line == 3 and reason.startswith("YAML syntax")


def test_top_level_must_be_a_mapping() -> None:
    assert problems("- a\n- b\n") == [(1, "the policy must be a mapping at the top level")]


def run_check(*files: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bastion", "check", *map(str, files)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_bastion_check_cli(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(GOOD)
    bad = tmp_path / "bad.yaml"
    bad.write_text(GOOD.replace("provider: vllm", "provider: vlm"))
    ok = run_check(good)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "good.yaml: ok (3 providers, 2 models)" in ok.stdout
    failed = run_check(good, bad)
    assert failed.returncode == 1
    assert (
        f"{bad}:9: models.chat-default.routes.1.provider: unknown provider 'vlm'" in failed.stdout
    )
    missing = run_check(tmp_path / "nope.yaml")
    assert missing.returncode == 1 and "cannot read file" in missing.stdout


def test_route_without_model_needs_a_default() -> None:
    text = """\
providers:
  openai: {type: openai}
  local: {type: local}
models:
  a: {routes: [{provider: openai}], fallbacks: [openai]}
  b: {routes: [{provider: local}]}
"""
    assert problems(text) == [
        (5, "models.a.routes.0: give a model: provider 'openai' has no default_model"),
        (5, "models.a.fallbacks.0: provider 'openai' has no default_model to fall back to"),
    ]


def test_key_models_accept_globs() -> None:
    policy = parse_policy(GOOD.replace("models: [chat-default]", 'models: ["chat-*", "emb?d"]'))
    assert policy.keys["ci"].models == ["chat-*", "emb?d"]


def test_bastion_check_reports_unknown_types_and_warns_on_unset_secrets(tmp_path: Path) -> None:
    f = tmp_path / "types.yaml"
    f.write_text(GOOD.replace("vllm: {type: openai,", "vllm: {type: nosuch,"))
    result = run_check(f)
    assert result.returncode == 1
    assert "providers.vllm.type: unknown provider type 'nosuch'" in result.stdout
    assert "warning: env:OPENAI_API_KEY is not set" in result.stderr


def test_includes_merge_sections_and_report_problems_in_their_own_file(tmp_path: Path) -> None:
    (tmp_path / "models.yaml").write_text(
        "models:\n  extra:\n    routes: [{provider: local, model: x}]\n"
    )
    main = tmp_path / "policy.yaml"
    main.write_text(GOOD + "include: [models.yaml]\n")
    policy = load_policy(main)
    assert "extra" in policy.models and "chat-default" in policy.models

    (tmp_path / "bad.yaml").write_text(
        "models:\n  chat-default:\n    routes: [{provider: local}]\n"
        "  broken:\n    routes: [{provider: nowhere, model: y}]\n"
        "server: {max_body_bytes: 10}\n"
    )
    main.write_text(GOOD + "include: bad.yaml\n")
    with pytest.raises(PolicyError) as info:
        load_policy(main)
    bad = str(tmp_path / "bad.yaml")
    assert info.value.problems == [
        (bad, 2, f"models.chat-default: already defined at {main}:6"),
        (bad, 6, "server: an included file may only hold providers, models and keys"),
    ]
    main.write_text(GOOD + "include: [missing.yaml]\n")
    with pytest.raises(PolicyError) as info:
        load_policy(main)
    [(f, line, reason)] = info.value.problems
    assert f == str(main) and line == 18 and "cannot read" in reason


def test_included_definitions_are_checked_with_their_lines(tmp_path: Path) -> None:
    (tmp_path / "more.yaml").write_text(
        "providers:\n  p2: {type: fake}\nmodels:\n  m2:\n    routes: [{provider: nope, model: z}]\n"
    )
    main = tmp_path / "policy.yaml"
    main.write_text(GOOD + "include: [more.yaml]\n")
    with pytest.raises(PolicyError) as info:
        load_policy(main)
    assert info.value.problems == [
        (str(tmp_path / "more.yaml"), 5, "models.m2.routes.0.provider: unknown provider 'nope'")
    ]


def test_rag_models_must_exist_with_the_right_type() -> None:
    text = (
        GOOD
        + """\
rag:
  embedding_model: chat-default
  retrieval: {rerank_model: embed}
"""
    )
    found = problems(text)
    assert (
        19,
        "rag.embedding_model: 'chat-default' is not an embedding model of this policy",
    ) in found
    assert (20, "rag.retrieval.rerank_model: 'embed' is not a rerank model of this policy") in found
    ok = GOOD.replace(
        "keys:", "  rr: {type: rerank, routes: [{provider: vllm, model: bge}]}\nkeys:"
    )
    policy = parse_policy(ok + "rag: {embedding_model: embed, retrieval: {rerank_model: rr}}\n")
    assert policy.rag.retrieval.rerank_model == "rr"
