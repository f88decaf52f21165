"""Prompt templates.

The paper trains every paradigm with the reasoning prompt of its Fig. A3 (``srft``); LUFFY's
issue #43 reports zero reward for RL on a 1.5B model without it, so the texts here are
verbatim. ``render_prompt`` turns a question (or a LUFFY-style list of chat messages) into
the exact text the policy continues: rollouts are generated after it and demonstrations are
tokenised as its continuation (see ``encode.encode_example``).
"""

from __future__ import annotations

from typing import Any

from srft_openrlhf.errors import ConfigError, DataError

# Paper Fig. A3, character for character the system turn of LUFFY's parquet files
# (``luffy/valid.all.parquet``): the "\n" inside the quotes are real newlines there.
SRFT_SYSTEM_PROMPT = (
    "Your task is to follow a systematic, thorough reasoning process before providing the "
    "final solution. This involves analyzing, summarizing, exploring, reassessing, and refining "
    "your thought process through multiple iterations. Structure your response into two "
    "sections: Thought and Solution. In the Thought section, present your reasoning using the "
    'format: "<think>\n {thoughts} </think>\n". Each thought should include detailed analysis, '
    'brainstorming, verification, and refinement of ideas. After "</think>\n," in the Solution '
    "section, provide the final, logical, and accurate answer, clearly derived from the "
    "exploration in the Thought section. If applicable, include the answer in \\boxed{} for "
    "closed-form results like multiple choices or mathematical solutions."
)
QWEN_MATH_SYSTEM_PROMPT = "Please reason step by step, and put your final answer within \\boxed{}."
TEMPLATES = ("srft", "qwen_math", "none", "chat")

# The srft generation prompt is opened with this, so every response starts inside the thought.
THINK_OPEN = "<think>\n"

_SYSTEM = {"srft": SRFT_SYSTEM_PROMPT, "qwen_math": QWEN_MATH_SYSTEM_PROMPT}


def has_chat_template(tokenizer: Any) -> bool:
    return tokenizer is not None and bool(getattr(tokenizer, "chat_template", None))


def user_question(prompt: str | list[dict]) -> str:
    """The question text: the prompt itself, or the content of the last user turn of a message list."""
    if isinstance(prompt, str):
        return prompt
    users = [m.get("content") for m in prompt if isinstance(m, dict) and m.get("role") == "user"]
    if not users or not isinstance(users[-1], str):
        raise DataError(f"prompt messages have no user turn with text content: {prompt!r:.200}")
    return users[-1]


def _open_think(text: str) -> str:
    """Append "<think>\\n" unless the chat template already opened the thought (R1-style templates do)."""
    if text.endswith(THINK_OPEN):
        return text
    if text.endswith("<think>"):
        return text + "\n"
    return text + THINK_OPEN


def render_prompt(question: str | list[dict], template: str = "srft", tokenizer: Any = None) -> str:
    """Render a question with one of ``TEMPLATES``.

    - ``srft``: system = Fig. A3 prompt, user = the question, through the tokenizer's chat
      template with the generation prompt opened by ``<think>\\n``; without a chat template
      ``{system}\\n\\nQuestion: {question}\\nAnswer: <think>\\n``.
    - ``qwen_math``: the same with the Qwen2.5-Math system line and no ``<think>``; the plain
      fallback ends in ``Answer:`` without a trailing space, because byte-level BPE attaches the
      space to the next word and a prompt ending in a space pushes the model off-distribution.
    - ``none``: the bare question.
    - ``chat``: the tokenizer's own chat template (its default system turn, if any).

    A message list (LUFFY layout: system + user) contributes only its user question to
    srft / qwen_math / none (the chosen template replaces its system turn); ``chat`` uses
    the messages as they are.
    """
    if template not in TEMPLATES:
        raise ConfigError(f"unknown template '{template}' (known: {', '.join(TEMPLATES)}); set data.template")
    if template == "chat":
        if not has_chat_template(tokenizer):
            raise ConfigError(
                "data.template=chat needs a tokenizer with a chat_template; "
                f"choose one of {', '.join(t for t in TEMPLATES if t != 'chat')}"
            )
        messages = (
            [{"role": "user", "content": question}]
            if isinstance(question, str)
            else [{"role": m["role"], "content": m["content"]} for m in question]
        )
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    text = user_question(question)
    if template == "none":
        return text
    system = _SYSTEM[template]
    if not has_chat_template(tokenizer):
        return f"{system}\n\nQuestion: {text}\nAnswer:" + (" " + THINK_OPEN if template == "srft" else "")
    messages = [{"role": "system", "content": system}, {"role": "user", "content": text}]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return _open_think(rendered) if template == "srft" else rendered
