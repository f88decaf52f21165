"""A local run's data: the training and evaluation examples of the config, rendered and
tokenised, with the tokenizer. Every data error surfaces here, before a model is built."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from srft_openrlhf.config import SRFTConfig
from srft_openrlhf.data.encode import check_round_trip, demo_continuation
from srft_openrlhf.data.example import TOY
from srft_openrlhf.errors import ConfigError
from srft_openrlhf.local.rollout import PromptItem, encode_items
from srft_openrlhf.local.step import phase_losses

if TYPE_CHECKING:
    from srft_openrlhf.data import Example


@dataclass
class RunData:
    tokenizer: Any
    train: list[PromptItem]
    eval: list[PromptItem]
    eval_groups: list[str] | None  # toy held-out: "chained_carry" / "other" per problem


def load_tokenizer(cfg: SRFTConfig):
    if cfg.model.path == TOY:
        from srft_openrlhf.data import toy

        return toy.build_tokenizer()
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(
        str(Path(cfg.model.path).expanduser()), trust_remote_code=cfg.model.trust_remote_code
    )


def load_data(cfg: SRFTConfig) -> RunData:
    """Load, render and tokenise the training (and eval) set: every data error surfaces here,
    before a model is built. Demonstrations are required when some phase trains on them."""
    from srft_openrlhf.data import toy
    from srft_openrlhf.data.sources import config_examples

    d = cfg.data
    tokenizer = load_tokenizer(cfg)
    needs_demos = any(loss.needs_demos for loss in phase_losses(cfg))
    if needs_demos and not d.demo_key and d.train != TOY:
        raise ConfigError(
            f"loss preset {cfg.loss.preset!r} (schedule {cfg.train.schedule}) trains on "
            "demonstrations but data.demo_key is null; set data.demo_key"
        )
    train = config_examples(d.train, d, demo_key=d.demo_key, require_demo=needs_demos)
    eval_source = d.eval or (TOY if d.train == TOY else None)
    evaluation: list[Example] = config_examples(eval_source, d, heldout=True) if eval_source else []
    groups: list[str] | None = None
    if eval_source == TOY:
        groups = []
        for ex in evaluation:
            assert isinstance(ex.prompt, str)  # toy.examples builds every prompt as a question string
            groups.append(toy.problem_group(ex.prompt))
    encode = dict(
        tokenizer=tokenizer, template=d.template, max_prompt_len=d.max_prompt_len, max_response_len=d.max_response_len
    )
    data = RunData(tokenizer, encode_items(train, **encode), encode_items(evaluation, **encode), groups)
    check_round_trip(tokenizer, round_trip_sample(data.train), f"model.path {cfg.model.path}")
    return data


def round_trip_sample(items: list[PromptItem], count: int = 32) -> list[tuple[str, str]]:
    """The rendered prompts and demonstrations of the first ``count`` training items."""
    texts = []
    for i, item in enumerate(items[:count]):
        texts.append((f"training prompt {i}", item.prompt_text))
        if item.demo_text:
            texts.append((f"demonstration {i}", demo_continuation(item.prompt_text, item.demo_text)))
    return texts
