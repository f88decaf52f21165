"""The run folder's data files as OpenRLHF reads them: rendered prompts with JSON labels, demos, eval.

The training file holds exactly ``train.steps × prompts_per_step`` prompts in the order they
are trained on (one seeded permutation of the examples per epoch, as in the local backend), so
one OpenRLHF episode is ``train.steps`` steps.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from srft_openrlhf.config import SRFTConfig
from srft_openrlhf.data import encode_example, render_prompt
from srft_openrlhf.data.sampler import PromptSampler
from srft_openrlhf.data.sources import config_examples
from srft_openrlhf.errors import ConfigError, DataError
from srft_openrlhf.openrlhf.layout import layout_of
from srft_openrlhf.openrlhf.reward_func import encode_label
from srft_openrlhf.runs import RunFiles


def openrlhf_prompt(tokenizer: Any, question: Any, cfg: SRFTConfig, where: str) -> str:
    """The prompt text OpenRLHF tokenises (without special tokens) into what ``encode_example``
    gives: the rendered template, with the BOS text in front where our rules add a BOS."""
    text = render_prompt(question, cfg.data.template, tokenizer)
    ids = encode_example(
        tokenizer, text, None, cfg.data.max_prompt_len, cfg.data.max_response_len, where=where
    ).prompt_ids
    bos = tokenizer.bos_token_id
    if bos is not None and ids and ids[0] == bos and not text.startswith(tokenizer.bos_token):
        text = tokenizer.bos_token + text
    return text


def rendered_prompts(examples: list, tokenizer: Any, cfg: SRFTConfig) -> list[tuple[Any, str]]:
    """(example, prompt text) for every example whose prompt fits; a long prompt is a
    DataError unless data.skip_invalid_rows (then it is dropped and counted)."""
    kept, skipped = [], 0
    for ex in examples:
        try:
            kept.append((ex, openrlhf_prompt(tokenizer, ex.prompt, cfg, f"{ex.source} row {ex.row}")))
        except DataError:
            if not cfg.data.skip_invalid_rows:
                raise
            skipped += 1
    if skipped:
        print(f"srft: skipped {skipped} example(s) whose prompt exceeds data.max_prompt_len", file=sys.stderr)
    if not kept:
        raise DataError(f"{cfg.data.train}: no example has a prompt within data.max_prompt_len")
    return kept


def _write_jsonl(path: Path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(path)


@dataclass(frozen=True)
class DataRows:
    """The rows of the data files, built (and every row checked) before anything is written."""

    train: list[dict]
    demos: list[dict] | None  # line k: the demonstrations of example k (presets that use them)
    eval: list[dict] | None


def data_rows(cfg: SRFTConfig, tokenizer: Any) -> DataRows:
    """train.jsonl (steps × prompts_per_step prompts), demos.jsonl and eval.jsonl rows, as OpenRLHF
    reads them. Raises DataError / ConfigError naming the file and row of the first bad one."""
    d, layout = cfg.data, layout_of(cfg)
    train_examples = config_examples(
        d.train, d, demo_key=d.demo_key if layout.demos else None, require_demo=bool(layout.demos)
    )
    kept = rendered_prompts(train_examples, tokenizer, cfg)
    demos = [{"demonstrations": [ex.demonstration]} for ex, _ in kept] if layout.demos else None
    # The local backend's order: one seeded permutation of the examples per epoch, drawn step by
    # step (OpenRLHF reads the file in this order: patches.prepare_datasets_in_file_order).
    sampler = PromptSampler(len(kept), cfg.train.prompts_per_step, cfg.train.seed)
    order = [i for step in range(cfg.train.steps) for i in sampler.batch(step)]
    train = [{"prompt": kept[i][1], "label": encode_label(kept[i][0].answer, i)} for i in order]
    evaluation = None
    if d.eval:  # read and checked even when only the CPU path's before / after accuracy uses it
        evaluation = [
            {"prompt": text, "label": encode_label(ex.answer), "datasource": Path(ex.source).stem}
            for ex, text in rendered_prompts(eval_examples(cfg), tokenizer, cfg)
        ]
    return DataRows(train, demos, evaluation if cfg.train.eval_every > 0 else None)


def write_rows(files: RunFiles, rows: DataRows) -> None:
    if rows.demos is not None:
        _write_jsonl(files.demos, rows.demos)
    _write_jsonl(files.train_data, rows.train)
    if rows.eval is not None:
        _write_jsonl(files.eval_data, rows.eval)


def write_data(cfg: SRFTConfig, files: RunFiles, tokenizer: Any) -> None:
    """The run's data files (``data_rows``) in the run folder."""
    write_rows(files, data_rows(cfg, tokenizer))


def eval_examples(cfg: SRFTConfig) -> list:
    if not cfg.data.eval:
        raise ConfigError("data.eval is not set: there are no held-out examples to read")
    return config_examples(cfg.data.eval, cfg.data, heldout=True)
