"""Token ids of a rendered prompt and of its demonstration.

A demonstration is trained on exactly as if the policy had generated it after the prompt:
the prompt ids are the ones rollouts are generated from, and the demo ids are the raw
continuation of the rendered prompt, tokenised on their own like generated tokens are.

Special tokens:
- BOS: the prompt is tokenised without special tokens, then BOS is prepended only if the
  tokenizer adds one by default and the text does not already start with it (a chat template
  such as Llama 3's writes BOS itself; Qwen has none). So BOS appears at most once.
- EOS: appended to the demonstration (``tokenizer.eos_token_id``), so the policy learns to stop.
- Truncation: a demonstration longer than ``max_response_len`` (EOS included) keeps its first
  ``max_response_len`` tokens and no EOS, like a rollout cut at the length limit, and is
  flagged ``demo_truncated`` so the trainer can count it in its metrics.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from srft_openrlhf.data.templates import THINK_OPEN
from srft_openrlhf.errors import ConfigError, DataError


@dataclass
class Encoded:
    prompt_ids: list[int]
    demo_ids: list[int] | None
    demo_truncated: bool


def _adds_bos(tokenizer: Any) -> bool:
    bos = tokenizer.bos_token_id
    if bos is None:
        return False
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return bool(ids) and ids[0] == bos


def _prompt_ids(tokenizer: Any, prompt_text: str) -> list[int]:
    ids = list(tokenizer(prompt_text, add_special_tokens=False)["input_ids"])
    if _adds_bos(tokenizer) and (not ids or ids[0] != tokenizer.bos_token_id):
        ids.insert(0, tokenizer.bos_token_id)
    return ids


def demo_continuation(prompt_text: str, demo_text: str) -> str:
    """The demo text that follows ``prompt_text``: the srft prompt already opens ``<think>\\n``,
    and OpenR1 demos start with ``<think>`` too, so that opening is dropped (with one newline
    after it) instead of being doubled."""
    stripped = demo_text.lstrip()
    if prompt_text.endswith(THINK_OPEN) and stripped.startswith("<think>"):
        rest = stripped[len("<think>") :]
        return rest[1:] if rest.startswith("\n") else rest
    return demo_text


def encode_example(
    tokenizer: Any,
    prompt_text: str,
    demo_text: str | None,
    max_prompt_len: int,
    max_response_len: int,
    where: str | None = None,
) -> Encoded:
    """Encode a rendered prompt and its optional demonstration (see the module docstring).

    ``where`` (e.g. ``"train.parquet row 12"``) prefixes the error for a prompt longer than
    ``max_prompt_len`` tokens.
    """
    if max_response_len < 1:
        raise ConfigError(f"data.max_response_len must be at least 1, got {max_response_len}")
    prompt_ids = _prompt_ids(tokenizer, prompt_text)
    if len(prompt_ids) > max_prompt_len:
        prefix = f"{where}: " if where else ""
        raise DataError(
            f"{prefix}prompt has {len(prompt_ids)} tokens, more than "
            f"data.max_prompt_len={max_prompt_len} (raise data.max_prompt_len or drop the row)"
        )
    if demo_text is None:
        return Encoded(prompt_ids=prompt_ids, demo_ids=None, demo_truncated=False)
    if tokenizer.eos_token_id is None:
        raise ConfigError(
            "the tokenizer has no eos_token, so demonstrations cannot end; "
            "set eos_token in the model's tokenizer_config.json"
        )
    demo_ids = list(tokenizer(demo_continuation(prompt_text, demo_text), add_special_tokens=False)["input_ids"])
    demo_ids.append(tokenizer.eos_token_id)
    if len(demo_ids) > max_response_len:
        return Encoded(prompt_ids=prompt_ids, demo_ids=demo_ids[:max_response_len], demo_truncated=True)
    return Encoded(prompt_ids=prompt_ids, demo_ids=demo_ids, demo_truncated=False)


def check_round_trip(tokenizer: Any, texts: list[tuple[str, str]], tokenizer_source: str) -> None:
    """Refuse a tokenizer that does not reproduce the training text: ``decode(encode(x)) == x``
    for every ``(where, x)`` (up to Unicode NFC normalisation, which Qwen's tokenizers apply).

    A tokenizer reloaded with the wrong pre-tokenizer can drop characters when encoding
    (a byte-level one drops those missing from its vocabulary) while decoding still looks
    right, so training would silently see other text than the data holds.
    """
    import unicodedata

    for where, text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        back = tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        if back != text and back != unicodedata.normalize("NFC", text):
            raise DataError(
                f"{tokenizer_source}: the tokenizer does not reproduce the training text of {where}: "
                f"encoding then decoding {_preview(text)} gives {_preview(back)}. Training would see other "
                "text than the data holds; fix or re-save that folder's tokenizer files (tokenizer.json, "
                "tokenizer_config.json)"
            )


def _preview(text: str, width: int = 60) -> str:
    return repr(text if len(text) <= width else text[:width] + "...")
