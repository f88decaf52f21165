"""What the analyses read: models, run folders and their checkpoints, prompts, tokenizers.

Model specs (``--base``, ``--models``, ``--refs``, ``--responses-from``), optionally
prefixed by ``NAME=``:

- a Hugging Face model folder (it has ``config.json``);
- a run folder of ``srft train`` (it has ``config.yaml``): its newest checkpoint, or
  ``RUN_DIR@STEP`` for the checkpoint of one step (``@0``: the model the run started from);
- ``toy``: the toy task's base model (built and cached on first use).

Checkpoints of a run folder, as either backend writes them:

- local backend: ``checkpoints/step-XXXXXX/`` (the Hugging Face model itself, see
  the local backend's checkpoint writer), held-out correctness per step in
  ``eval/step-XXXXXX.jsonl`` (one ``{"correct": bool}`` line per problem);
- OpenRLHF backend: ``checkpoints/global_step<N>_hf/`` (written with
  ``cluster.save_hf_checkpoints: true``) and the final ``model/``.

Every problem here is a ``UserError`` naming the input it is about.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from srft_openrlhf.data.example import TOY
from srft_openrlhf.errors import ConfigError, DataError
from srft_openrlhf.runs import LOCAL_CHECKPOINT, checkpoint_folders, run_files
from srft_openrlhf.runs.records import read_records

# Text references: responses that are fixed texts rather than samples of a model.
DEMOS = "demos"  # the demonstrations of the --data rows (on the toy: the flawed teacher's)
TOY_SOLVER = "toy:solver"  # the toy's correct worked solutions (a perfect solver)
TEXT_SOURCES = (DEMOS, TOY_SOLVER)


# ----------------------------------------------------------------------------- models


@dataclass(frozen=True)
class ModelRef:
    """A model to load: a display name, the Hugging Face folder, and what the user wrote."""

    name: str
    path: Path
    spec: str


def split_name(value: str) -> tuple[str | None, str]:
    """``"NAME=SPEC"`` → (NAME, SPEC); a bare ``"SPEC"`` → (None, SPEC)."""
    name, sep, rest = value.partition("=")
    if sep and name and "/" not in name and rest:
        return name, rest
    return None, value


def is_model_dir(path: Path) -> bool:
    return (path / "config.json").is_file()


def is_run_dir(path: Path) -> bool:
    return run_files(path).config.is_file()


def toy_base_path() -> Path:
    from srft_openrlhf.data import toy

    return toy.base_model_path()


def resolve_model(value: str, what: str = "model") -> ModelRef:
    """A model spec (see the module docstring) → ``ModelRef``; ``what`` names the flag in errors."""
    name, spec = split_name(value)
    path_text, at, step_text = spec.rpartition("@") if "@" in spec else (spec, "", "")
    if spec == TOY:
        return ModelRef(name or "toy-base", toy_base_path(), value)
    path = Path(path_text).expanduser()
    if at and not step_text.isdigit():
        raise ConfigError(f"{what} {value!r}: the step after '@' must be a number (RUN_DIR@STEP)")
    if is_model_dir(path):
        if at:
            raise ConfigError(f"{what} {value!r}: {path} is a model folder, not a run folder; drop @{step_text}")
        return ModelRef(name or path.name, path, value)
    if is_run_dir(path):
        ckpt = checkpoint_at(path, int(step_text)) if at else final_checkpoint(path)
        default = f"{path.name}@{ckpt.step}" if at else path.name
        return ModelRef(name or default, ckpt.path, value)
    raise ConfigError(
        f"{what} {value!r}: {describe_missing(path)} (expected a Hugging Face model folder with "
        "config.json, a run folder with config.yaml, or 'toy')"
    )


def describe_missing(path: Path) -> str:
    if not path.exists():
        return f"{path} does not exist"
    if not path.is_dir():
        return f"{path} is a file"
    return f"{path} has neither config.json nor config.yaml"


def unique_names(refs: list[ModelRef], what: str) -> None:
    seen: dict[str, str] = {}
    for r in refs:
        if r.name in seen:
            raise ConfigError(
                f"{what}: two models are named {r.name!r} ({seen[r.name]} and {r.spec}); name them with NAME=PATH"
            )
        seen[r.name] = r.spec


# ----------------------------------------------------------------------------- run folders


@dataclass(frozen=True)
class Checkpoint:
    step: int
    path: Path  # Hugging Face model folder
    initial: bool = False  # the model the run started from (step 0), not a saved checkpoint


def run_checkpoints(run_dir: Path) -> list[Checkpoint]:
    """The saved checkpoints of a run folder, by step (either backend's layout)."""
    run_dir = Path(run_dir)
    if not is_run_dir(run_dir):
        raise ConfigError(
            f"{run_dir}: not a run folder ({describe_missing(run_dir)}; expected config.yaml as `srft train` writes it)"
        )
    found = checkpoint_folders(run_dir)
    for folder in found.values():
        if not is_model_dir(folder):
            raise ConfigError(
                f"{folder}: checkpoint without config.json (an incomplete or foreign checkpoint; "
                "delete it or train with the current code)"
            )
    return [Checkpoint(step, found[step]) for step in sorted(found)]


def initial_model(run_dir: Path) -> Checkpoint:
    """The model a run started from (``model.path`` of its config.yaml), as step 0."""
    import yaml

    config = yaml.safe_load(run_files(run_dir).config.read_text()) or {}
    model_path = str((config.get("model") or {}).get("path") or "")
    if model_path == TOY:
        return Checkpoint(0, toy_base_path(), initial=True)
    path = Path(model_path).expanduser()
    if not is_model_dir(path):
        raise ConfigError(
            f"{run_dir}/config.yaml: model.path {model_path!r} (the run's step 0): "
            f"{describe_missing(path)}; pass --no-initial to leave step 0 out"
        )
    return Checkpoint(0, path, initial=True)


def checkpoint_at(run_dir: Path, step: int) -> Checkpoint:
    """The checkpoint of ``step`` (0: the initial model), or an error listing the steps there are."""
    if step == 0:
        return initial_model(run_dir)
    ckpts = run_checkpoints(run_dir)
    for c in ckpts:
        if c.step == step:
            return c
    have = ", ".join(str(c.step) for c in ckpts) or "none"
    raise ConfigError(
        f"{run_dir}: no checkpoint for step {step} (checkpoints there: {have}; "
        "train.keep_checkpoints decides how many a run keeps)"
    )


def final_checkpoint(run_dir: Path) -> Checkpoint:
    """The newest checkpoint (OpenRLHF: the final ``model/`` folder when present)."""
    ckpts = run_checkpoints(run_dir)
    final_model = run_files(run_dir).model
    if is_model_dir(final_model):
        return Checkpoint(max((c.step for c in ckpts), default=0), final_model)
    if not ckpts:
        raise ConfigError(
            f"{run_dir}: no checkpoint under {run_files(run_dir).checkpoints} "
            "(set train.save_every > 0; keep more with train.keep_checkpoints)"
        )
    return ckpts[-1]


def run_accuracy(run_dir: Path) -> dict[int, float]:
    """Held-out accuracy per step: from ``eval/step-XXXXXX.jsonl`` files, else the
    ``eval_accuracy`` records of ``metrics.jsonl``; empty when the run has neither."""
    files = run_files(run_dir)
    acc: dict[int, float] = {}
    for record in read_records(files.metrics):
        if isinstance(record, dict) and record.get("eval_accuracy") is not None and "step" in record:
            acc[int(record["step"])] = float(record["eval_accuracy"])
    for path in sorted(files.eval.glob("step-*.jsonl")):
        match = LOCAL_CHECKPOINT.match(path.stem)
        if not match:
            continue
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if rows:
            acc[int(match.group(1))] = sum(bool(r.get("correct")) for r in rows) / len(rows)
    return acc


# ----------------------------------------------------------------------------- prompts


@dataclass(frozen=True)
class Prompt:
    """One problem: the question as the dataset gives it and the text the model continues."""

    benchmark: str
    id: str
    question: Any  # str, or chat messages
    answer: str
    demonstration: str | None
    text: str  # rendered with the template


def toy_examples(split: str, limit: int, balanced: bool) -> list:
    """Toy problems of ``split``; ``balanced``: half with a chained carry (where the flawed
    teacher's demonstrations go wrong half of the time), half without, in split order."""
    from srft_openrlhf.data import toy

    examples = toy.examples(split)
    if not balanced:
        return examples[:limit]
    quota = {"chained_carry": limit // 2, "other": limit - limit // 2}
    kept = []
    for ex in examples:
        assert isinstance(ex.prompt, str)  # toy.examples builds every prompt as a question string
        group = toy.problem_group(ex.prompt)
        if quota[group] > 0:
            quota[group] -= 1
            kept.append(ex)
    return kept


def load_prompts(
    data: list[str],
    *,
    template: str,
    tokenizer: Any,
    limit: int,
    toy_split: str = "heldout",
    toy_balanced: bool = False,
    prompt_key: str = "prompt",
    answer_key: str = "answer",
    demo_key: str | None = "demonstration",
) -> list[Prompt]:
    """The first ``limit`` problems of each ``--data`` entry, rendered with ``template``.

    An entry is ``toy`` (the toy task, ``toy_split``), a local ``.json``/``.jsonl``/``.parquet``
    file (``NAME=FILE`` names its benchmark, else the file stem), or the name of a benchmark of
    the evaluation harness (``math500``, ``aime24``, ...: its hub dataset).
    """
    from srft_openrlhf.data import load_examples, render_prompt

    if limit < 1:
        raise ConfigError(f"--limit must be at least 1, got {limit}")
    prompts: list[Prompt] = []
    names: set[str] = set()
    for entry in data:
        name, source = split_name(entry)
        if source == TOY:
            name = name or TOY
            rows = [
                (str(ex.row), ex.prompt, ex.answer, ex.demonstration)
                for ex in toy_examples(toy_split, limit, toy_balanced)
            ]
        elif Path(source).expanduser().is_file():
            name = name or Path(source).stem
            loaded = load_examples(
                str(Path(source).expanduser()),
                prompt_key=prompt_key,
                answer_key=answer_key,
                demo_key=demo_key,
                limit=limit,
            )
            rows = [(str(ex.row), ex.prompt, ex.answer, ex.demonstration) for ex in loaded.examples]
        else:
            name = name or source
            rows = benchmark_rows(source, limit)
        if name in names:
            raise ConfigError(f"--data: two entries are named {name!r}; name them with NAME=FILE")
        names.add(name)
        for pid, question, answer, demo in rows:
            prompts.append(Prompt(name, pid, question, answer, demo, render_prompt(question, template, tokenizer)))
    if not prompts:
        raise DataError(f"--data {' '.join(data)}: no problems")
    return prompts


def benchmark_rows(name: str, limit: int) -> list[tuple[str, Any, str, str | None]]:
    """Problems of a benchmark of the evaluation harness, from its hub dataset."""
    from srft_openrlhf.data.benchmarks import BENCHMARKS, get_benchmark, load_benchmark

    if name not in BENCHMARKS:
        raise ConfigError(
            f"--data {name!r}: not a file, not 'toy' and not a known benchmark (known: {', '.join(BENCHMARKS)})"
        )
    return [(p.id, p.question, p.answer, None) for p in load_benchmark(get_benchmark(name), limit=limit)]


def toy_solver_text(question: str) -> str:
    """The toy's correct worked solution of ``"a+b=?"`` (the perfect solver's response)."""
    from srft_openrlhf.data import toy

    a, b = question.removesuffix("=?").split("+")
    return toy.solution_text(*toy._correct(int(a), int(b)))


def reference_texts(source: str, prompts: list[Prompt]) -> list[str]:
    """The fixed response texts of a text reference (``demos`` or ``toy:solver``), one per prompt."""
    if source == DEMOS:
        missing = [f"{p.benchmark} row {p.id}" for p in prompts if not p.demonstration]
        if missing:
            raise DataError(
                f"reference 'demos': {len(missing)} problems have no demonstration "
                f"(first: {missing[0]}); set --demo-key to the field that holds them"
            )
        return [p.demonstration for p in prompts if p.demonstration]  # all of them: none is missing
    if source == TOY_SOLVER:
        wrong = [p for p in prompts if p.benchmark != TOY]
        if wrong:
            raise ConfigError(f"reference 'toy:solver' needs --data toy (got benchmark {wrong[0].benchmark!r})")
        return [toy_solver_text(p.question) for p in prompts]
    raise ConfigError(f"unknown text reference {source!r} (known: {', '.join(TEXT_SOURCES)})")


def fill_task_defaults(args: Any) -> bool:
    """Whether the command runs on the toy task (``--data toy`` or ``--tokenizer toy``); fills
    the defaults that depend on it: template ``none`` and 48 new tokens on the toy (as its
    training config), else ``srft`` and 1024."""
    toy_task = args.data == [TOY] or args.tokenizer == TOY
    args.template = args.template or ("none" if toy_task else "srft")
    args.max_new_tokens = args.max_new_tokens or (48 if toy_task else 1024)
    return toy_task


def command_prompts(args: Any, first: ModelRef, toy_task: bool, **toy: Any) -> list[Prompt]:
    """``load_prompts`` of the command line's ``--data``, rendered with the tokenizer of the first
    model (the toy's on the toy task); ``toy``: ``toy_split`` / ``toy_balanced``."""
    tokenizer = toy_tokenizer() if toy_task else load_tokenizer(first)
    return load_prompts(
        args.data,
        template=args.template,
        tokenizer=tokenizer,
        limit=args.limit,
        prompt_key=args.prompt_key,
        answer_key=args.answer_key,
        demo_key=args.demo_key,
        **toy,
    )


def generation_options(args: Any, cache: Path) -> dict[str, Any]:
    """``scoring.generate_responses``' keyword arguments from the command line (both analyses)."""
    return {
        "cache_dir": cache,
        "temperature": args.temperature,
        "max_new_tokens": args.max_new_tokens,
        "samples": getattr(args, "samples", 1),  # token-shift scores one response a prompt
        "seed": args.seed,
        "batch_size": args.batch_size,
        "device": args.device,
        "dtype": args.dtype,
    }


def scoring_options(args: Any, tokenizer: Any, cache: Path) -> dict[str, Any]:
    """``scoring.score_responses``' keyword arguments from the command line and the shared tokenizer."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return {
        "pad_id": pad_id,
        "cache_dir": cache,
        "device": args.device,
        "dtype": args.dtype,
        "max_batch_tokens": args.max_batch_tokens,
    }


# ----------------------------------------------------------------------------- tokenizers


def toy_tokenizer() -> Any:
    from srft_openrlhf.data import toy

    return toy.build_tokenizer()


def load_tokenizer(ref: ModelRef) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(ref.path))
    except (OSError, ValueError) as e:
        raise ConfigError(f"{ref.name} ({ref.path}): cannot load its tokenizer ({e})") from None


def shared_tokenizer(refs: list[ModelRef], probe_texts: list[str], toy_task: bool) -> Any:
    """The one tokenizer every model in ``refs`` uses, after checking that they agree.

    On the toy task it is ``toy.build_tokenizer()`` and each model folder's tokenizer must have
    the same vocabulary (token → id). Otherwise it is the first model's tokenizer and every other
    must encode each of ``probe_texts`` to the same ids. A difference is a ``ConfigError``
    "tokenizer mismatch between X and Y" naming the first text or token that differs.
    """
    if toy_task:
        tokenizer = toy_tokenizer()
        vocab = tokenizer.get_vocab()
        for ref in refs:
            theirs = load_tokenizer(ref).get_vocab()
            if theirs != vocab:
                diff = sorted(set(vocab.items()) ^ set(theirs.items()))[:3]
                raise ConfigError(
                    f"tokenizer mismatch between the toy task's tokenizer and {ref.name} "
                    f"({ref.path}): vocabularies differ (e.g. {diff})"
                )
        return tokenizer
    first, tokenizer = refs[0], load_tokenizer(refs[0])
    expected = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in probe_texts]
    for ref in refs[1:]:
        other = load_tokenizer(ref)
        for text, ids in zip(probe_texts, expected):
            theirs = other(text, add_special_tokens=False)["input_ids"]
            if theirs != ids:
                raise ConfigError(
                    f"tokenizer mismatch between {first.name} ({first.path}) and {ref.name} "
                    f"({ref.path}): {text[:60]!r} encodes as {ids[:12]}... and {theirs[:12]}...; "
                    "token probabilities are comparable only on the same tokens"
                )
        for attr in ("eos_token_id", "pad_token_id"):
            if getattr(other, attr) != getattr(tokenizer, attr):
                raise ConfigError(
                    f"tokenizer mismatch between {first.name} ({first.path}) and {ref.name} "
                    f"({ref.path}): {attr} {getattr(tokenizer, attr)} vs {getattr(other, attr)}"
                )
    return tokenizer
