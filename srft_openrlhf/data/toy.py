"""The toy task of the quick start: 3-digit addition with worked column sums, offline.

No model or dataset can be downloaded in the quick start, so it brings its own:

- **Problems** ``"347+285=?"``, operands uniform in [100, 999]. The held-out split (greedy
  accuracy before/after training) and the training split are disjoint as unordered pairs.
  A third split, ``validation`` (``data.eval: toy:validation``), picks learning rates
  (``scripts/reproduce_toy.sh``) so that the held-out problems only report: 200 problems
  drawn like the training problems (uniform operands, so chained carries come in the same
  ~25% share) and graded like the held-out ones (the true sum, correct demonstrations),
  disjoint from the held-out and training problems and from every problem the base model
  was pre-trained on. It is drawn after the other two from the same rng, which leaves them
  as they were.
- **Demonstrations** in the paper's format, one line per column, units first::

      <think>
      7+5=12
      4+8+1=13
      3+2+1=6
      </think> \\boxed{632}

- **Flawed demonstrations** (real distilled demonstrations are imperfect; the paper assumes
  high-quality ones and names imperfect ones as future work. With perfect demonstrations
  plain SFT is unbeatable on this task and the RL part is never tested):
  1. *wrong step*: on problems with a chained carry (the units column carries into the
     tens and the tens column carries again, about 25% of problems) the teacher forgets
     the carry into the hundreds column half of the time, ``3+2=5``, and boxes the answer
     that follows from it (off by 100): about 12% of all demonstrations. Imitation leaves
     the policy undecided exactly there; rewards can tell which of the two is right.
  2. *wrong final answer*: 10% of the other demonstrations have correct steps but one
     digit of the boxed answer changed (a transcription slip).
  ``flaw_counts`` reports the shares it produced.
- **Tokenizer** built locally: a byte-level BPE without merges, i.e. one token per byte
  (the same pre-tokenizer, normaliser and decoder as Qwen2's), plus the markers
  ``<think>``, ``</think>`` and ``\\boxed{``, so a demonstration is ~35 tokens. Being of
  Qwen2's own kind, a saved model folder reloads through ``AutoTokenizer`` (which forces
  ``Qwen2Tokenizer`` on a Qwen2 config) and encodes every text exactly as in memory.
- **Base model**: a tiny Qwen2 (head_dim 32, as vLLM on CPU requires) pre-trained *to
  convergence* on the worked solutions of a sloppy student who writes a carry only
  ``base_carry_rate`` (15%) of the time and otherwise forgets it (the answer then follows
  from the wrong column). So the base is weak for a structural reason, not because its
  training stopped early: greedy decoding never carries (it solves only the ~30% of
  problems without an internal carry, and no chained carry), while sampling at temperature
  1 carries now and then and solves roughly a third of the training problems, which gives
  the RL terms a signal from the first step. ``base_stats`` measures these numbers; the
  build prints them. The base is built on first use and cached under
  ``${SRFT_CACHE:-~/.cache/srft-openrlhf}/toy-base-<hash>``, the hash covering every
  setting below, written to a temporary folder and renamed into place, so an interrupted
  build never leaves a cache entry that loads half.

``model.path: toy`` and ``data.train: toy`` in a config select this task (the trainer calls
``base_model_path`` and ``examples``).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
import random
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from srft_openrlhf.data.example import TOY, TOY_VALIDATION, Example

SOURCE = TOY
VALIDATION_SOURCE = TOY_VALIDATION
SPECIAL_TOKENS = ("<pad>", "<eos>", "<unk>")
MARKERS = ("<think>", "</think>", "\\boxed{")


@dataclass(frozen=True)
class ToyTask:
    """Every setting of the toy task; the base-model cache is keyed by a hash of all of them."""

    version: int = 2  # bump when the code below changes what it builds
    seed: int = 1234
    heldout_size: int = 400
    train_size: int = 8000
    validation_size: int = 200  # drawn after both splits: changes neither, nor the base model
    chained_carry_flaw_rate: float = 0.5  # flaw 1: share of chained-carry demonstrations with the bug
    typo_rate: float = 0.10  # flaw 2: share of the other demonstrations with a wrong final answer
    # base model (Qwen2 architecture)
    hidden_size: int = 128
    intermediate_size: int = 384
    num_layers: int = 2
    num_heads: int = 4  # head_dim = 128 / 4 = 32
    max_position_embeddings: int = 128
    # base pre-training, to convergence, on a sloppy student's worked solutions of problems
    # outside both splits: each carry into the tens or hundreds is written with this probability
    base_carry_rate: float = 0.15
    pretrain_steps: int = 600
    pretrain_batch: int = 64
    pretrain_lr: float = 3e-3

    def key(self) -> str:
        """Hash of the settings the base model depends on (the flaws only shape training data)."""
        settings = {k: v for k, v in dataclasses.asdict(self).items() if k not in NOT_IN_BASE_FIELDS}
        return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


DEMO_ONLY_FIELDS = ("chained_carry_flaw_rate", "typo_rate")
NOT_IN_BASE_FIELDS = (*DEMO_ONLY_FIELDS, "validation_size")  # the base model does not depend on these


TASK = ToyTask()


# ----------------------------------------------------------------------------- problems


def question(a: int, b: int) -> str:
    return f"{a}+{b}=?"


def column_steps(a: int, b: int, forget: frozenset[int] | set[int] = frozenset()) -> tuple[list[str], int]:
    """The column sums, units first, and the answer they lead to.

    ``forget``: columns (1 = tens, 2 = hundreds) whose incoming carry is forgotten; the
    column is then summed without it and everything after follows from that mistake.
    The teacher's bug (flaw 1) is ``forget={2}`` on a chained carry; the base model's
    sloppy student forgets each carry at random.
    """
    da, db = str(a)[::-1], str(b)[::-1]
    lines, digits, carry = [], [], 0
    for col in range(len(da)):
        x, y = int(da[col]), int(db[col])
        if col in forget:
            carry = 0
        s = x + y + carry
        lines.append(f"{x}+{y}+{carry}={s}" if carry else f"{x}+{y}={s}")
        digits.append(s % 10)
        carry = s // 10
    answer = int("".join(map(str, ([carry] if carry else []) + digits[::-1])))
    return lines, answer


def chained_carry(a: int, b: int) -> bool:
    """The units column carries and the tens column, with that carry, carries again."""
    units = a % 10 + b % 10
    return units >= 10 and (a // 10 % 10 + b // 10 % 10 + 1) >= 10


def problem_group(prompt: str) -> str:
    """ "chained_carry" (the demonstrations of such problems carry flaw 1) or "other"."""
    a, b = prompt.removesuffix("=?").split("+")
    return "chained_carry" if chained_carry(int(a), int(b)) else "other"


def solution_text(lines: list[str], answer: str) -> str:
    return "<think>\n" + "\n".join(lines) + "\n</think> \\boxed{" + answer + "}"


def demonstration(a: int, b: int, rng: random.Random, task: ToyTask = TASK) -> tuple[str, str]:
    """A teacher's demonstration and its kind: "correct", "wrong_step" or "wrong_answer"."""
    if chained_carry(a, b):
        if rng.random() < task.chained_carry_flaw_rate:
            lines, answer = column_steps(a, b, forget={2})
            return solution_text(lines, str(answer)), "wrong_step"
        return solution_text(*_correct(a, b)), "correct"
    lines, answer = column_steps(a, b)
    text = str(answer)
    if rng.random() < task.typo_rate:
        pos = rng.randrange(len(text))
        wrong = rng.choice([d for d in "0123456789" if d != text[pos] and not (pos == 0 and d == "0")])
        return solution_text(lines, text[:pos] + wrong + text[pos + 1 :]), "wrong_answer"
    return solution_text(lines, text), "correct"


def student_solution(a: int, b: int, rng: random.Random, carry_rate: float) -> str:
    """The base model's pre-training text: a sloppy student's worked solution, which writes
    each carry into the tens and the hundreds with probability ``carry_rate``."""
    forget = {col for col in (1, 2) if rng.random() >= carry_rate}
    lines, answer = column_steps(a, b, forget=forget)
    return solution_text(lines, str(answer))


def _pairs(rng: random.Random, count: int, exclude: set[tuple[int, int]]) -> list[tuple[int, int]]:
    """``count`` distinct problems, none equal to an excluded one as an unordered pair."""
    out: list[tuple[int, int]] = []
    seen = set(exclude)
    while len(out) < count:
        a, b = rng.randint(100, 999), rng.randint(100, 999)
        key = (min(a, b), max(a, b))
        if key not in seen:
            seen.add(key)
            out.append((a, b))
    return out


def unordered(pairs) -> set[tuple[int, int]]:
    """The problems as unordered pairs: 347+285 and 285+347 are the same problem."""
    return {(min(a, b), max(a, b)) for a, b in pairs}


def _splits(task: ToyTask, rng: random.Random | None = None) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """Held-out, then training problems, drawn from ``rng`` (default: a fresh one seeded
    ``task.seed``; ``_validation_pairs`` passes its own and draws on after them)."""
    rng = random.Random(task.seed) if rng is None else rng
    heldout = _pairs(rng, task.heldout_size, set())
    taken = {(min(a, b), max(a, b)) for a, b in heldout}
    return heldout, _pairs(rng, task.train_size, taken)


def pretrain_problems(task: ToyTask = TASK) -> set[tuple[int, int]]:
    """Every problem ``pretrain_base_model`` trains the base on (unordered pairs): its draws
    replayed without a tokenizer or a model, rng call for rng call."""
    heldout, train = _splits(task)
    exclude = unordered(heldout + train)
    rng = random.Random(task.seed + 2)
    seen: set[tuple[int, int]] = set()
    for _ in range(task.pretrain_steps):
        pairs = _pairs(rng, task.pretrain_batch, exclude)  # as _pretrain_batch draws them
        for a, b in pairs:
            student_solution(a, b, rng, task.base_carry_rate)
        seen |= unordered(pairs)
    return seen


@functools.lru_cache(maxsize=4)
def _validation_pairs(task: ToyTask) -> tuple[tuple[int, int], ...]:
    """``task.validation_size`` problems drawn after the held-out and training ones from the
    same rng (which leaves those two as they were), none of them a held-out, training or
    base pre-training problem."""
    rng = random.Random(task.seed)
    heldout, train = _splits(task, rng)
    return tuple(_pairs(rng, task.validation_size, unordered(heldout + train) | pretrain_problems(task)))


def examples(split: str, task: ToyTask = TASK) -> list[Example]:
    """``"train"`` (with demonstrations, flawed ones included), ``"heldout"`` or
    ``"validation"`` (correct demonstrations; the answer is the true sum)."""
    if split in ("heldout", "validation"):
        pairs = _splits(task)[0] if split == "heldout" else list(_validation_pairs(task))
        return [
            Example(
                prompt=question(a, b),
                answer=str(a + b),
                demonstration=solution_text(*_correct(a, b)),
                source=SOURCE if split == "heldout" else VALIDATION_SOURCE,
                row=i,
            )
            for i, (a, b) in enumerate(pairs)
        ]
    _, train = _splits(task)
    if split == "train":
        rng = random.Random(task.seed + 1)
        return [
            Example(
                prompt=question(a, b),
                answer=str(a + b),
                demonstration=demonstration(a, b, rng, task)[0],
                source=SOURCE,
                row=i,
            )
            for i, (a, b) in enumerate(train)
        ]
    raise ValueError(f"toy split must be 'train', 'heldout' or 'validation', got {split!r}")


def flaw_counts(task: ToyTask = TASK) -> dict[str, int]:
    """How many training demonstrations are correct / wrong_step / wrong_answer."""
    _, train = _splits(task)
    rng = random.Random(task.seed + 1)
    counts = {"correct": 0, "wrong_step": 0, "wrong_answer": 0}
    for a, b in train:
        counts[demonstration(a, b, rng, task)[1]] += 1
    return counts


def _correct(a: int, b: int) -> tuple[list[str], str]:
    lines, answer = column_steps(a, b)
    return lines, str(answer)


# ----------------------------------------------------------------------------- tokenizer


def build_tokenizer() -> Any:
    """A byte-level BPE with no merges (one token per byte) plus the markers.

    Qwen2's own pre-tokenizer, normaliser and decoder: ``AutoTokenizer`` rebuilds a folder
    with a Qwen2 config as ``Qwen2Tokenizer`` from the vocabulary alone, whatever class the
    tokenizer was saved as, and a tokenizer of any other kind would then encode differently
    (an earlier character-level one lost every space and newline that way).
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS + tuple(sorted(pre_tokenizers.ByteLevel.alphabet())))}
    tok = Tokenizer(
        models.BPE(
            vocab=vocab,
            merges=[],
            unk_token=None,
            continuing_subword_prefix="",
            end_of_word_suffix="",
            fuse_unk=False,
            byte_fallback=False,
        )
    )
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True) for t in SPECIAL_TOKENS])
    # markers are matched before the per-byte split, so each is one token
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in MARKERS])
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>", unk_token="<unk>")


# ----------------------------------------------------------------------------- base model


def cache_root() -> Path:
    return Path(os.environ.get("SRFT_CACHE", "~/.cache/srft-openrlhf")).expanduser()


def base_model_path(task: ToyTask = TASK, cache_dir: Path | None = None, log=print) -> Path:
    """The cached toy base model folder (HF format, tokenizer included), built on first use."""
    root = Path(cache_dir) if cache_dir is not None else cache_root()
    final = root / f"toy-base-{task.key()}"
    if (final / "config.json").is_file():
        return final
    root.mkdir(parents=True, exist_ok=True)
    log(f"[toy] building the toy base model (first use, cached in {final})")
    tmp = Path(tempfile.mkdtemp(prefix=".toy-base-tmp-", dir=root))
    try:
        pretrain_base_model(task, tmp, log=log)
        _fsync_tree(tmp)
        try:
            os.replace(tmp, final)
        except OSError:
            if not (final / "config.json").is_file():  # not a concurrent builder that won
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _fsync_tree(folder: Path) -> None:
    for p in folder.iterdir():
        with open(p, "rb") as f:
            os.fsync(f.fileno())


def _pretrain_batch(rng: random.Random, tokenizer: Any, size: int, exclude: set[tuple[int, int]], carry_rate: float):
    """Token ids and loss mask (response tokens only) of ``size`` student solutions."""
    import torch

    rows, masks = [], []
    for a, b in _pairs(rng, size, exclude):
        prompt = tokenizer(question(a, b), add_special_tokens=False)["input_ids"]
        response = tokenizer(student_solution(a, b, rng, carry_rate), add_special_tokens=False)["input_ids"]
        response.append(tokenizer.eos_token_id)
        rows.append(prompt + response)
        masks.append([0] * len(prompt) + [1] * len(response))
    width = max(map(len, rows))
    ids = torch.full((size, width), tokenizer.pad_token_id, dtype=torch.long)
    loss_mask = torch.zeros((size, width), dtype=torch.bool)
    for i, (r, m) in enumerate(zip(rows, masks)):
        ids[i, : len(r)] = torch.tensor(r)
        loss_mask[i, : len(m)] = torch.tensor(m, dtype=torch.bool)
    return ids, loss_mask


def pretrain_base_model(task: ToyTask, out: Path, log=print) -> None:
    """A fresh tiny Qwen2 trained by next-token prediction on the sloppy student's solutions."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tokenizer = build_tokenizer()
    torch.manual_seed(task.seed)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=task.hidden_size,
        intermediate_size=task.intermediate_size,
        num_hidden_layers=task.num_layers,
        num_attention_heads=task.num_heads,
        num_key_value_heads=task.num_heads,
        max_position_embeddings=task.max_position_embeddings,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = Qwen2ForCausalLM(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=task.pretrain_lr, weight_decay=0.0)
    warmup = max(1, task.pretrain_steps // 10)

    def lr_factor(step: int) -> float:  # linear warm-up, cosine decay to 10%
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, task.pretrain_steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    heldout, train = _splits(task)
    # the base never sees a problem of either split, so both measure what training adds
    exclude = {(min(a, b), max(a, b)) for a, b in heldout + train}
    rng = random.Random(task.seed + 2)
    model.train()
    for step in range(task.pretrain_steps):
        ids, loss_mask = _pretrain_batch(rng, tokenizer, task.pretrain_batch, exclude, task.base_carry_rate)
        logits = model(input_ids=ids, attention_mask=(ids != tokenizer.pad_token_id).long()).logits
        targets = ids[:, 1:]
        token_loss = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), reduction="none"
        ).view_as(targets)
        mask = loss_mask[:, 1:]
        loss = (token_loss * mask).sum() / mask.sum()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if (step + 1) % 100 == 0 or step + 1 == task.pretrain_steps:
            log(f"[toy] base pre-training step {step + 1}/{task.pretrain_steps}: loss {loss.item():.3f}")
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.eval()
    stats = base_stats(model, tokenizer, task)
    log(
        f"[toy] base model: greedy held-out accuracy {stats['greedy_heldout']:.1%} "
        f"(chained carries {stats['greedy_heldout_chained_carry']:.1%}), "
        f"sampled accuracy at temperature 1 on training prompts {stats['sampled_train']:.1%}"
    )
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "toy_task.json").write_text(json.dumps(dataclasses.asdict(task), indent=1))
    (out / BASE_STATS_FILE).write_text(json.dumps(stats, indent=1))


BASE_STATS_FILE = "base_stats.json"


def base_stats(model: Any, tokenizer: Any, task: ToyTask = TASK, samples: int = 512, seed: int = 0) -> dict[str, float]:
    """Where the base starts, in the three numbers that make it a fair start for SRFT:

    - ``greedy_heldout``: greedy accuracy on the held-out split (what training is judged by);
    - ``greedy_heldout_chained_carry``: the same on its chained-carry problems, where the
      teacher's demonstrations are often wrong;
    - ``sampled_train``: accuracy of one sample at temperature 1 (top-p 1) on each of the
      first ``samples`` training prompts: how often the RL terms see a rewarded rollout.
    """
    heldout, train = _splits(task)
    chained = [chained_carry(a, b) for a, b in heldout]
    greedy = _solved(model, tokenizer, heldout, sample=False, seed=seed)
    sampled = _solved(model, tokenizer, train[:samples], sample=True, seed=seed)
    hits = [ok for ok, c in zip(greedy, chained) if c]
    return {
        "greedy_heldout": sum(greedy) / len(greedy),
        "greedy_heldout_chained_carry": sum(hits) / max(1, len(hits)),
        "sampled_train": sum(sampled) / len(sampled),
    }


def _solved(
    model: Any, tokenizer: Any, pairs: list[tuple[int, int]], *, sample: bool, seed: int, batch: int = 128
) -> list[bool]:
    """Whether the model's completion of each problem boxes the right sum (every prompt
    "abc+def=?" has the same length, so batches need no padding)."""
    import torch

    from srft_openrlhf.reward import math_reward

    torch.manual_seed(seed)
    out: list[bool] = []
    for start in range(0, len(pairs), batch):
        chunk = pairs[start : start + batch]
        ids = torch.tensor([tokenizer(question(a, b), add_special_tokens=False)["input_ids"] for a, b in chunk])
        with torch.no_grad():
            gen = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=48,
                do_sample=sample,
                temperature=1.0 if sample else None,
                top_k=0 if sample else None,
                top_p=1.0 if sample else None,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
        texts = tokenizer.batch_decode(gen[:, ids.shape[1] :], skip_special_tokens=True)
        out.extend(math_reward(t, str(a + b), mode="oat") >= 1.0 for t, (a, b) in zip(texts, chunk))
    return out
