"""Prompt templates: exact texts with and without a chat template."""

from __future__ import annotations

import copy

import pytest

from srft_openrlhf.data import QWEN_MATH_SYSTEM_PROMPT, SRFT_SYSTEM_PROMPT, TEMPLATES, render_prompt
from srft_openrlhf.errors import ConfigError, DataError

Q = "What is 12 + 35?"
LUFFY_MESSAGES = [{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": Q}]


@pytest.fixture
def plain_tokenizer(tiny_tokenizer):
    """The shared tiny tokenizer without a chat template (a base model's tokenizer)."""
    tok = copy.deepcopy(tiny_tokenizer)
    tok.chat_template = None
    return tok


def test_srft_system_prompt_is_the_luffy_system_turn(benchmarks):
    path = benchmarks.root / "luffy" / "valid.all.parquet"
    import pyarrow.parquet as pq

    rows = pq.read_table(path, columns=["prompt"]).slice(0, 50).to_pylist()
    systems = {r["prompt"][0]["content"] for r in rows if r["prompt"][0]["role"] == "system"}
    assert systems == {SRFT_SYSTEM_PROMPT}


def test_srft_system_prompt_details():
    # Real newlines inside the quoted format, one backslash before boxed (as in the parquet).
    assert '"<think>\n {thoughts} </think>\n"' in SRFT_SYSTEM_PROMPT
    assert 'After "</think>\n," in the Solution' in SRFT_SYSTEM_PROMPT
    assert "include the answer in \\boxed{} for closed-form" in SRFT_SYSTEM_PROMPT
    assert SRFT_SYSTEM_PROMPT.startswith("Your task is to follow a systematic, thorough reasoning process")
    assert QWEN_MATH_SYSTEM_PROMPT == "Please reason step by step, and put your final answer within \\boxed{}."
    assert TEMPLATES == ("srft", "qwen_math", "none", "chat")


@pytest.mark.parametrize("use_tokenizer", [False, True])
def test_plain_fallback_exact(use_tokenizer, plain_tokenizer):
    tok = plain_tokenizer if use_tokenizer else None
    assert render_prompt(Q, "srft", tok) == SRFT_SYSTEM_PROMPT + "\n\nQuestion: " + Q + "\nAnswer: <think>\n"
    assert render_prompt(Q, "qwen_math", tok) == (
        "Please reason step by step, and put your final answer within \\boxed{}.\n\nQuestion: What is 12 + 35?\nAnswer:"
    )
    assert render_prompt(Q, "none", tok) == Q


def test_chat_template_exact(tiny_tokenizer):
    assert render_prompt(Q, "srft", tiny_tokenizer) == (
        f"<|im_start|>system\n{SRFT_SYSTEM_PROMPT}<|im_end|>\n"
        f"<|im_start|>user\n{Q}<|im_end|>\n<|im_start|>assistant\n<think>\n"
    )
    assert render_prompt(Q, "qwen_math", tiny_tokenizer) == (
        f"<|im_start|>system\n{QWEN_MATH_SYSTEM_PROMPT}<|im_end|>\n"
        f"<|im_start|>user\n{Q}<|im_end|>\n<|im_start|>assistant\n"
    )
    assert render_prompt(Q, "chat", tiny_tokenizer) == (f"<|im_start|>user\n{Q}<|im_end|>\n<|im_start|>assistant\n")
    assert render_prompt(Q, "none", tiny_tokenizer) == Q


def test_messages_keep_only_the_question_except_for_chat(tiny_tokenizer, plain_tokenizer):
    for tok in (tiny_tokenizer, plain_tokenizer, None):
        for template in ("srft", "qwen_math", "none"):
            assert render_prompt(LUFFY_MESSAGES, template, tok) == render_prompt(Q, template, tok)
            assert "helpful assistant" not in render_prompt(LUFFY_MESSAGES, template, tok)
    assert render_prompt(LUFFY_MESSAGES, "chat", tiny_tokenizer) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        f"<|im_start|>user\n{Q}<|im_end|>\n<|im_start|>assistant\n"
    )


def test_srft_generation_prompt_opens_think_once(tiny_tokenizer):
    r1 = copy.deepcopy(tiny_tokenizer)  # an R1-style template that already opens the thought
    r1.chat_template = tiny_tokenizer.chat_template.replace("assistant\n{% endif %}", "assistant\n<think>\n{% endif %}")
    text = render_prompt(Q, "srft", r1)
    assert text.endswith("<|im_start|>assistant\n<think>\n")
    assert text.count("<think>\n {thoughts}") == 1 and text.count("assistant\n<think>\n") == 1


def test_luffy_row_renders_like_its_own_messages(benchmarks):
    path = benchmarks.root / "luffy" / "valid.parquet"
    import pyarrow.parquet as pq

    messages = pq.read_table(path, columns=["prompt"]).slice(0, 1).to_pylist()[0]["prompt"]
    system, user = messages[0]["content"], messages[1]["content"]
    assert render_prompt(messages, "srft") == f"{system}\n\nQuestion: {user}\nAnswer: <think>\n"


def test_unknown_template_lists_known():
    with pytest.raises(ConfigError, match="unknown template 'srtf'.*srft, qwen_math, none, chat"):
        render_prompt(Q, "srtf")


def test_chat_without_chat_template_is_an_error(plain_tokenizer):
    for tok in (None, plain_tokenizer):
        with pytest.raises(ConfigError, match="chat_template"):
            render_prompt(Q, "chat", tok)


def test_messages_without_user_turn():
    with pytest.raises(DataError, match="no user turn"):
        render_prompt([{"role": "system", "content": "x"}], "srft")
