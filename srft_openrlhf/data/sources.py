"""The examples a config names: ``data.train`` / ``data.eval`` as both backends read them."""

from __future__ import annotations

from typing import TYPE_CHECKING

from srft_openrlhf.data import toy
from srft_openrlhf.data.example import TOY, TOY_VALIDATION, Example
from srft_openrlhf.data.loading import load_examples
from srft_openrlhf.errors import ConfigError

if TYPE_CHECKING:
    from srft_openrlhf.config import DataConfig


def config_examples(
    source: str,
    data: DataConfig,
    *,
    heldout: bool = False,
    demo_key: str | None = None,
    require_demo: bool = False,
) -> list[Example]:
    """The examples of ``source`` as both backends read ``data.train`` / ``data.eval``: "toy" is
    the toy task's training split (its held-out split with ``heldout``), "toy:validation" its
    validation split (an evaluation set only: ``data.eval``), anything else goes
    through ``load_examples`` with the ``data.*`` keys; capped at ``data.max_train_rows``
    (``data.max_eval_rows`` with ``heldout``)."""
    limit = data.max_eval_rows if heldout else data.max_train_rows
    if source == TOY:
        return toy.examples("heldout" if heldout else "train")[:limit]
    if source == TOY_VALIDATION:
        if not heldout:
            raise ConfigError(
                f"{TOY_VALIDATION!r} is the toy task's validation split, an evaluation set: "
                f"use it as data.eval (data.train: {TOY!r} is the training split)"
            )
        return toy.examples("validation")[:limit]
    return load_examples(
        source,
        split=data.split,
        prompt_key=data.prompt_key,
        answer_key=data.answer_key,
        demo_key=demo_key,
        require_demo=require_demo,
        skip_invalid_rows=data.skip_invalid_rows,
        limit=limit,
    ).examples
