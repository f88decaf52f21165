"""The OpenRLHF launcher without OpenRLHF: --dry-run of every config, the flag translation,
config checks, the data files it writes, the reward function file and the launch scripts."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import build_tiny_tokenizer, openrlhf_test_config, subprocess_env

from srft_openrlhf.cli import main as cli_main
from srft_openrlhf.config import load_config
from srft_openrlhf.errors import ConfigError, DataError
from srft_openrlhf.openrlhf import group_layout
from srft_openrlhf.openrlhf.data_files import openrlhf_prompt, write_data
from srft_openrlhf.openrlhf.flags import openrlhf_args
from srft_openrlhf.openrlhf.launcher import resumed_step
from srft_openrlhf.openrlhf.plan import check_config
from srft_openrlhf.openrlhf.reward_func import (
    decode_label,
    encode_label,
    make_reward_func,
    response_text,
    reward_func_file_text,
)
from srft_openrlhf.runs import run_files
from srft_openrlhf.runs.records import drop_records_after

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ["qwen2.5-math-1.5b", "qwen2.5-math-7b", "llama-3.1-8b"]


def flag_values(args: list[str]) -> dict[str, list[str]]:
    """``--flag v1 v2 --switch`` -> {"--flag": ["v1", "v2"], "--switch": []}; a repeated flag keeps the last."""
    out: dict[str, list[str]] = {}
    current = None
    for a in args:
        if a.startswith("--"):
            current = a
            out[current] = []
        else:
            out[current].append(a)
    return out


def dry_run(capsys, *argv: str) -> str:
    assert cli_main(["train", "--backend", "openrlhf", *argv, "--dry-run"]) == 0
    return capsys.readouterr().out


def command_flags(output: str) -> dict[str, list[str]]:
    command = output.split("## command\n", 1)[1]
    tokens = command.replace("\\\n", " ").split()
    assert tokens[:3] == ["python", "-m", "openrlhf.cli.train_ppo_ray"]
    return flag_values(tokens[3:])


@pytest.mark.parametrize("name", CONFIGS)
def test_dry_run_prints_the_paper_settings_and_writes_nothing(capsys, tmp_path, name):
    out_dir = tmp_path / "run"
    output = dry_run(capsys, "--config", str(ROOT / "configs" / f"{name}.yaml"), "--output-dir", str(out_dir))
    flags = command_flags(output)
    expected = {
        "--rollout.n_samples_per_prompt": ["9"],  # 8 rollouts + 1 demonstration
        "--rollout.batch_size": ["128"],
        "--train.batch_size": ["1152"],  # one optimizer step over the whole step
        "--actor.adam.lr": ["1e-06"],
        "--actor.lr_scheduler": ["constant_with_warmup"],
        "--actor.lr_warmup_ratio": ["0.0"],
        "--rollout.temperature": ["1.0"],
        "--rollout.max_new_tokens": ["8192"],
        "--data.max_len": ["9216"],  # 1024 prompt + 8192 response
        "--train.async_queue_size": ["1"],
        "--algo.kl.init_coef": ["0.0"],  # no reference model for SRFT
        "--data.prompt_dataset": [str(out_dir / "openrlhf" / "train.jsonl")],
        "--reward.remote_url": [str(out_dir / "openrlhf" / "reward_func.py")],
        "--ckpt.path": [str(out_dir / "checkpoints")],
    }
    for flag, values in expected.items():
        assert flags[flag] == values, flag
    assert "--train.async_enable" in flags and "--algo.kl.use_loss" not in flags
    assert int(flags["--actor.num_gpus_per_node"][0]) + int(flags["--vllm.num_engines"][0]) == 8
    assert "## resolved SRFT config" in output and "preset: srft" in output
    assert "## patch points" in output and "SamplesGenerator.generate_samples" in output
    assert "ActorPPOTrainer.training_step" in output
    assert not out_dir.exists()


def test_dry_run_model_paths_follow_the_configs(capsys, tmp_path):
    prepared = {
        "qwen2.5-math-7b": "Qwen2.5-Math-7B-rope40k-16k",
        "qwen2.5-math-1.5b": "Qwen2.5-Math-1.5B-rope40k-16k",
        "llama-3.1-8b": "meta-llama/Llama-3.1-8B-Instruct",
    }
    for name, path in prepared.items():
        flags = command_flags(
            dry_run(capsys, "--config", str(ROOT / "configs" / f"{name}.yaml"), "--output-dir", str(tmp_path))
        )
        assert flags["--actor.model_name_or_path"][0].endswith(path)


def config(tmp_path, *overrides: str):
    return load_config(ROOT / "configs" / "qwen2.5-math-7b.yaml", [f"logging.output_dir={tmp_path}", *overrides])


def test_presets_change_the_group_and_the_reference_model(tmp_path):
    files = run_files(tmp_path)
    luffy = flag_values(openrlhf_args(config(tmp_path, "loss.preset=luffy"), files, resume=False))
    assert luffy["--rollout.n_samples_per_prompt"] == ["8"]  # 7 rollouts + 1 demo in the 8 slots
    assert luffy["--train.batch_size"] == ["1024"]
    grpo = flag_values(openrlhf_args(config(tmp_path, "loss.preset=grpo"), files, resume=False))
    assert grpo["--rollout.n_samples_per_prompt"] == ["8"]
    sft_kl = flag_values(openrlhf_args(config(tmp_path, "loss.preset=sft_kl"), files, resume=True))
    assert sft_kl["--algo.kl.init_coef"] == ["0.2"] and sft_kl["--algo.kl.estimator"] == ["k3"]
    assert "--algo.kl.use_loss" in sft_kl and "--train.colocate_actor_ref" in sft_kl
    assert sft_kl["--ref.num_gpus_per_node"] == sft_kl["--actor.num_gpus_per_node"]
    assert "--ckpt.load_enable" in sft_kl


def test_group_layout():
    assert group_layout(8, 1, "append", True).size == 9
    assert (group_layout(8, 1, "replace", True).rollouts, group_layout(8, 1, "replace", True).size) == (7, 8)
    assert group_layout(8, 1, "append", False) == group_layout(8, 0, "append", True)


def test_extra_args_that_keep_the_srft_layout_pass():
    from srft_openrlhf.openrlhf.plan import check_extra_args

    check_extra_args(
        [
            "--ds.ring_attn_size",
            "1",
            "--ds.adam_offload",
            "--actor.aux_loss_coef",
            "0.01",
            "--reward.overlong_buffer_len",
            "512",
        ]
    )


def test_max_staleness_0_is_fine_in_sync_mode(tmp_path):
    check_config(config(tmp_path, "train.max_staleness=0", "train.async_enable=false"))


def test_warmup_ratio_gives_back_the_warmup_steps():
    """OpenRLHF turns --actor.lr_warmup_ratio back into steps with ceil(steps × ratio)."""
    import math

    from srft_openrlhf.openrlhf.flags import warmup_ratio

    assert math.ceil(25 * warmup_ratio(7, 25)) == 7  # the plain ratio 7 / 25 would give 8
    for steps in range(1, 400):
        for warmup in range(0, steps + 1):
            assert math.ceil(steps * warmup_ratio(warmup, steps)) == warmup, (steps, warmup)


def test_colocated_sync_and_async_layouts(tmp_path):
    files = run_files(tmp_path)
    sync = flag_values(
        openrlhf_args(
            config(tmp_path, "train.async_enable=false", "cluster.colocate_all=true", "cluster.vllm_num_engines=8"),
            files,
            resume=False,
        )
    )
    assert sync["--actor.num_gpus_per_node"] == ["8"] and sync["--vllm.num_engines"] == ["8"]
    assert {"--train.colocate_all", "--vllm.enable_sleep", "--ds.enable_sleep"} <= set(sync)
    assert "--train.async_enable" not in sync
    two_nodes = flag_values(
        openrlhf_args(config(tmp_path, "cluster.nodes=2", "cluster.vllm_num_engines=8"), files, resume=False)
    )
    assert (two_nodes["--actor.num_nodes"], two_nodes["--actor.num_gpus_per_node"]) == (["1"], ["8"])
    extra = flag_values(openrlhf_args(config(tmp_path, "cluster.extra_args=[--ds.adam_offload]"), files, False))
    assert "--ds.adam_offload" in extra


@pytest.mark.parametrize(
    "overrides, key",
    [
        (["cluster.colocate_all=true", "train.async_enable=false"], "vllm_num_engines × vllm_tensor_parallel_size"),
        (["cluster.vllm_num_engines=8"], "do not fit"),
        (["train.micro_batch_size=5"], "multiple of train.micro_batch_size"),
        (["train.schedule=sft_then_rl"], "train.schedule"),
        (["model.dtype=fp32"], "model.dtype"),
        (["model.dtype=fp16"], "its vLLM engines are bf16 and refuse fp16 weights"),
        (["rollout.top_p=0.9"], "rollout.top_p = 0.9"),
        (
            ["cluster.cpu=true", "rollout.generator=vllm", "cluster.colocate_all=true", "train.async_enable=false"],
            "vLLM on CPU has no sleep mode",
        ),
        (["cluster.extra_args=[--algo.dynamic_filtering_enable]"], "--algo.dynamic_filtering_enable is set by"),
        (["cluster.extra_args=[--train.max_epochs, 2]"], "--train.max_epochs is set by"),
        (["cluster.extra_args=[--train.num_episodes=2]"], "--train.num_episodes=2 is set by"),
        (["cluster.extra_args=[--train.batch_size, 64]"], "cluster.extra_args"),
        (["loss.demos_per_group=2"], "loss.demos_per_group"),
        (["loss.preset=grpo", "rollout.n_samples_per_prompt=1"], "n_samples_per_prompt"),
        (["cluster.nodes=3", "cluster.actor_gpus=12"], "unevenly"),
        (["train.max_staleness=0"], "train.max_staleness"),  # async with no queue: OpenRLHF fails after start-up
        (["cluster.extra_args=[--ds.ring_attn_size, 2]"], "--ds.ring_attn_size 2 turns on OpenRLHF's packed"),
        (["cluster.extra_args=[--ds.ring_attn_size=4]"], "--ds.ring_attn_size 4"),
        (["cluster.extra_args=[--ds.tensor_parallel_size, 2]"], "--ds.tensor_parallel_size 2"),
        (["cluster.extra_args=[--actor.eps_clip, 0.3]"], "use loss.clip_low / loss.clip_high"),
        (["cluster.extra_args=[--actor.entropy_coef, 0.01]"], "use loss.entropy_bonus"),
        (["cluster.extra_args=[--actor.loss_agg_mode, seq-mean-token-mean]"], "use loss.loss_agg"),
        (["cluster.extra_args=[--algo.advantage.estimator, gae]"], "would also train a critic"),
        (["cluster.extra_args=[--algo.kl.target, 0.1]"], "loss.kl_coef"),
        (["cluster.extra_args=[--algo.advantage.no_std_norm]"], "use loss.normalize_std"),
        (["cluster.extra_args=[--algo.advantage.is_correction_level, token]"], "loss.clip_low"),
        (["cluster.extra_args=[--reward.clip_range, -1, 1]"], "--reward.clip_range"),
        (["logging.output_dir=/tmp/a,b"], "logging.output_dir"),
    ],
)
def test_config_errors_name_the_key(tmp_path, overrides, key):
    with pytest.raises(ConfigError, match=re.escape(key)):
        check_config(config(tmp_path, *overrides))


@pytest.mark.parametrize(
    "setting, message",
    [
        ("train.lr=-1", "train.lr must be > 0 and finite, got -1.0"),
        ("train.lr_warmup_steps=501", "train.lr_warmup_steps: 501 must be between 0 and train.steps (500)"),
        ("train.weight_decay=-0.1", "train.weight_decay must be >= 0 and finite, got -0.1"),
        ("train.adam_betas=[0.9,1.0]", "train.adam_betas must be two numbers in [0, 1)"),
        ("train.grad_clip=-1", "train.grad_clip must be > 0, or 0 to turn clipping off"),
    ],
)
def test_dry_run_rejects_the_values_the_local_backend_rejects(capsys, tmp_path, setting, message):
    """The same backend-independent checks as `srft train` (local): one line, before anything starts."""
    run_dir = tmp_path / "run"
    argv = ["--config", str(ROOT / "configs" / "qwen2.5-math-7b.yaml"), "--output-dir", str(run_dir)]
    assert cli_main(["train", "--backend", "openrlhf", *argv, "--set", setting, "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("srft train: error: "), err
    assert message in err, err
    assert not run_dir.exists()


# ----------------------------------------------------------------------------- data files


def write_examples(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


EXAMPLES = [
    {"prompt": "What is 12 + 35?", "answer": "47", "demonstration": "<think>\n12 + 35 = 47</think>\n\\boxed{47}"},
    {"prompt": "What is 2 + 3?", "answer": "5", "demonstration": "<think>\n2 + 3 = 5</think>\n\\boxed{5}"},
    {"prompt": "What is 1 + 1?", "answer": "2", "demonstration": "<think>\n1 + 1 = 3</think>\n\\boxed{3}"},
]


def small_config(tmp_path, data: Path, *overrides: str):
    return openrlhf_test_config(
        tmp_path, data, "train.steps=2", "train.prompts_per_step=2", "train.micro_batch_size=1", *overrides
    )


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_write_data_lays_out_prompts_labels_and_demos(tmp_path, tiny_tokenizer):
    from srft_openrlhf.data import render_prompt

    data = write_examples(tmp_path / "train.jsonl", EXAMPLES)
    cfg = small_config(tmp_path, data, f"data.eval={data}", "train.eval_every=1", "train.steps=3")
    files = run_files(cfg.logging.output_dir)
    write_data(cfg, files, tiny_tokenizer)
    train, demos, evals = read_jsonl(files.train_data), read_jsonl(files.demos), read_jsonl(files.eval_data)
    assert len(train) == 3 * 2  # steps × prompts_per_step
    labels = [decode_label(r["label"]) for r in train]
    assert all(answer == EXAMPLES[row]["answer"] for answer, row in labels)
    for r, (_, row) in zip(train, labels):
        assert r["prompt"] == render_prompt(EXAMPLES[row]["prompt"], "qwen_math", tiny_tokenizer)
    assert [d["demonstrations"] for d in demos] == [[e["demonstration"]] for e in EXAMPLES]
    assert [decode_label(r["label"]) for r in evals] == [(e["answer"], None) for e in EXAMPLES]
    assert {r["datasource"] for r in evals} == {"train"}


def test_training_file_is_one_seeded_permutation_per_epoch(tmp_path, tiny_tokenizer):
    """The local backend's rule (PromptSampler): every example once per epoch, in a seeded order."""
    from srft_openrlhf.data.sampler import PromptSampler

    rows = [dict(EXAMPLES[0], prompt=f"What is {i} + 1?", answer=str(i + 1)) for i in range(7)]
    data = write_examples(tmp_path / "train.jsonl", rows)

    def order(seed: int) -> list[int]:
        cfg = small_config(tmp_path, data, "train.steps=5", "train.prompts_per_step=3", f"train.seed={seed}")
        write_data(cfg, run_files(cfg.logging.output_dir), tiny_tokenizer)
        return [decode_label(r["label"])[1] for r in read_jsonl(run_files(cfg.logging.output_dir).train_data)]

    first = order(1)
    assert len(first) == 15 and sorted(first[:7]) == list(range(7)) and sorted(first[7:14]) == list(range(7))
    assert first == [i for step in range(5) for i in PromptSampler(7, 3, 1).batch(step)]
    assert order(2) != first and order(1) == first


def test_write_data_prompt_too_long(tmp_path, tiny_tokenizer):
    data = write_examples(tmp_path / "train.jsonl", EXAMPLES + [dict(EXAMPLES[0], prompt="7 + " * 500)])
    cfg = small_config(tmp_path, data)
    with pytest.raises(DataError, match="row 3"):
        write_data(cfg, run_files(cfg.logging.output_dir), tiny_tokenizer)
    cfg = small_config(tmp_path, data, "data.skip_invalid_rows=true")
    write_data(cfg, run_files(cfg.logging.output_dir), tiny_tokenizer)
    assert len(read_jsonl(run_files(cfg.logging.output_dir).demos)) == 3


def test_write_data_without_demos_for_grpo(tmp_path, tiny_tokenizer):
    rows = [{k: v for k, v in e.items() if k != "demonstration"} for e in EXAMPLES]
    cfg = small_config(tmp_path, write_examples(tmp_path / "train.jsonl", rows), "loss.preset=grpo")
    files = run_files(cfg.logging.output_dir)
    write_data(cfg, files, tiny_tokenizer)
    assert files.train_data.is_file() and not files.demos.exists()


def test_prompt_text_carries_the_bos_our_rules_add(tiny_tokenizer):
    """OpenRLHF tokenises prompts without special tokens; where encode_example prepends BOS,
    the prompt text starts with the BOS text so that both give the same ids."""
    from tokenizers import processors

    from srft_openrlhf.data import encode_example, render_prompt

    tok = build_tiny_tokenizer(chat_template=False)
    bos_id = tok.convert_tokens_to_ids("<|im_start|>")
    tok.bos_token = "<|im_start|>"
    tok._tokenizer.post_processor = processors.TemplateProcessing(
        single="<|im_start|> $A", special_tokens=[("<|im_start|>", bos_id)]
    )
    cfg = load_config(None, ["data.max_prompt_len=1000"])
    text = openrlhf_prompt(tok, "What is 2 + 3?", cfg, "row 0")
    ids = encode_example(tok, text, None, 1000, 64).prompt_ids
    assert text.startswith("<|im_start|>") and ids[0] == bos_id
    assert tok(text, add_special_tokens=False)["input_ids"] == ids
    plain = openrlhf_prompt(tiny_tokenizer, "What is 2 + 3?", cfg, "row 0")  # no BOS: the template as is
    assert plain == render_prompt("What is 2 + 3?", "srft", tiny_tokenizer)


# ----------------------------------------------------------------------------- reward function


def test_labels_round_trip_and_plain_labels():
    assert decode_label(encode_label("\\frac{1}{2}", 7)) == ("\\frac{1}{2}", 7)
    assert decode_label(encode_label("3")) == ("3", None)
    assert decode_label("42") == ("42", None) and decode_label("x^2") == ("x^2", None)


def test_response_text_strips_the_prompt():
    prompt = "Put the answer in \\boxed{}.\nAnswer: <think>\n"
    assert response_text(prompt + "1 + 1 = 2</think> \\boxed{2}", prompt) == "1 + 1 = 2</think> \\boxed{2}"
    assert response_text("other text", prompt) == "other text"


def test_reward_func_file_is_what_openrlhf_loads(tmp_path):
    """The file the launcher writes defines reward_func(queries, prompts, labels) returning
    OpenRLHF's dict; the system prompt's empty \\boxed{} never counts as the answer."""
    import importlib.util

    path = tmp_path / "reward_func.py"
    path.write_text(reward_func_file_text("math", "either", 5.0, 0))
    spec = importlib.util.spec_from_file_location("reward_func", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    prompt = "Put the final answer in \\boxed{}.\nQuestion: 12 + 35?\nAnswer: <think>\n"
    queries = [prompt + "12 + 35 = 47</think>\n\\boxed{47}<|im_end|>", prompt + "</think>\n\\boxed{46}", prompt]
    out = module.reward_func(queries, [prompt] * 3, [encode_label("47", 0)] * 3)
    assert out["rewards"].tolist() == [1.0, 0.0, 0.0]
    assert out["scores"].tolist() == [1.0, 0.0, 0.0]
    assert out["extra_logs"]["reward_timeout"].tolist() == [0.0, 0.0, 0.0]
    assert make_reward_func(kind="choice", num_workers=0)(["\\boxed{B}"], [""], ["B"])["rewards"].tolist() == [1.0]


def test_reward_func_batches_concurrent_calls(monkeypatch):
    """OpenRLHF calls reward_func one rollout at a time from many threads: the calls that wait
    while a batch is graded are graded together, so rollout.reward_workers can all work.

    No sleeps: the first call's grading is held until the five later calls all wait for their
    results (their futures' ``result()`` entered), so the batches are exactly [1, 5]."""
    import threading
    from concurrent.futures import Future

    from srft_openrlhf.openrlhf import reward_func as module
    from srft_openrlhf.reward import batch_rewards

    sizes = []
    grading, release = threading.Event(), threading.Event()
    waiting = threading.Semaphore(0)

    class WatchedFuture(Future):
        def result(self, timeout=None):
            waiting.release()  # this caller has queued its samples and now waits
            return super().result(timeout)

    def held_batch(responses, answers, **kwargs):
        sizes.append(len(responses))
        grading.set()
        assert release.wait(timeout=60), "grading never released"
        return batch_rewards(responses, answers, **{**kwargs, "num_workers": 0})

    monkeypatch.setattr(module, "batch_rewards", held_batch)
    monkeypatch.setattr(module, "Future", WatchedFuture)
    func = make_reward_func(num_workers=2)
    results = {}

    def call(i):
        results[i] = func([f"\\boxed{{{i}}}"], [""], [encode_label(str(i % 2))])["rewards"].tolist()

    threads = [threading.Thread(target=call, args=(i,)) for i in range(6)]
    threads[0].start()
    assert grading.wait(timeout=60)  # the first call grades alone
    for t in threads[1:]:
        t.start()
    for _ in threads[1:]:
        assert waiting.acquire(timeout=60)  # all five queued behind it
    release.set()
    for t in threads:
        t.join(timeout=60)
    assert results == {i: [1.0 if i < 2 else 0.0] for i in range(6)}  # each caller gets its own sample's reward
    assert sizes == [1, 5]


def test_reward_func_never_raises(monkeypatch):
    """A failing worker pool falls back to grading in process; a failure there scores 0."""
    from srft_openrlhf.openrlhf import reward_func as module
    from srft_openrlhf.reward import batch_rewards

    calls = []

    def pool_fails(responses, answers, num_workers, **kwargs):
        calls.append(num_workers)
        if num_workers > 0:
            raise RuntimeError("reward worker did not start within 120.0 s")
        return batch_rewards(responses, answers, num_workers=0, **kwargs)

    monkeypatch.setattr(module, "batch_rewards", pool_fails)
    out = make_reward_func(num_workers=2)(["\\boxed{4}", "\\boxed{5}"], ["", ""], ["4", "4"])
    assert out["rewards"].tolist() == [1.0, 0.0] and calls == [2, 0]

    def always_fails(*args, **kwargs):
        raise MemoryError("no memory")

    monkeypatch.setattr(module, "batch_rewards", always_fails)
    out = make_reward_func(num_workers=2)(["\\boxed{4}"], [""], ["4"])
    assert out["rewards"].tolist() == [0.0] and out["scores"].tolist() == [0.0]


# ----------------------------------------------------------------------------- launch scripts


@pytest.fixture
def fake_srft(tmp_path):
    """A `srft` on PATH that records its arguments (and makes prepare-model's DST)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls.txt"
    script = bin_dir / "srft"
    script.write_text(f"""#!/usr/bin/env bash
printf '%s\\n' "$*" >> {log}
if [[ "$1" == prepare-model ]]; then mkdir -p "$3" && echo '{{}}' > "$3/config.json"; fi
while (( $# )); do [[ "$1" == --output-dir ]] && mkdir -p "$2"; shift; done
""")
    script.chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", MODELS=str(tmp_path / "models"))
    env.pop("RAY_ADDRESS", None)
    return env, log


def run_script(name: str, env: dict, *args: str) -> None:
    subprocess.run(["bash", str(ROOT / "scripts" / name), *args], env=env, check=True, cwd=ROOT, timeout=60)


def test_scripts_prepare_the_model_once_and_split_the_gpus(tmp_path, fake_srft):
    env, log = fake_srft
    base = tmp_path / "models" / "Qwen2.5-Math-7B"
    base.mkdir(parents=True)
    (base / "config.json").write_text("{}")
    run_script("train_srft_qwen2.5_math_7b.sh", dict(env, NODES="2"), "--set", "train.steps=3")
    run_script("train_srft_qwen2.5_math_7b.sh", env)
    calls = log.read_text().splitlines()
    prepared = tmp_path / "models" / "Qwen2.5-Math-7B-rope40k-16k"
    assert calls[0] == f"prepare-model {base} {prepared} --rope-theta 40000 --max-position-embeddings 16384"
    assert sum(c.startswith("prepare-model") for c in calls) == 1
    first, second = calls[1], calls[2]
    assert first.startswith("train --backend openrlhf --config ") and "configs/qwen2.5-math-7b.yaml" in first
    for part in (
        f"model.path={prepared}",
        "cluster.nodes=2",
        "cluster.vllm_num_engines=8",
        "cluster.ray_address=auto",
        "--algo srft",
        "train.steps=3",
    ):
        assert part in first
    assert "cluster.vllm_num_engines=4" in second and "ray_address" not in second


def test_baseline_script_runs_sft_then_rl_as_two_jobs(tmp_path, fake_srft):
    env, log = fake_srft
    out = tmp_path / "out"
    run_script("train_baseline.sh", dict(env, MODEL="llama-3.1-8b", OUTPUT_DIR=str(out), COLOCATE="1"), "sft_rl")
    sft, rl = log.read_text().splitlines()
    assert "--algo sft" in sft and "train.steps=350" in sft and "train.lr_warmup_steps=35" in sft
    assert "cluster.colocate_all=true" in sft and "cluster.vllm_num_engines=8" in sft
    assert "--algo grpo" in rl and f"model.path={out}/sft/model" in rl and "train.steps=150" in rl
    assert "prepare-model" not in log.read_text()  # LLaMA needs no preparation


RAY_JOB_DRIVER = """
import json, os, sys
import ray
from srft_openrlhf.config import load_config
from srft_openrlhf.openrlhf.launcher import init_ray

init_ray(load_config(sys.argv[1], sys.argv[2:]))

@ray.remote
def probe():
    import only_in_working_dir  # shipped by the job's working_dir, installed nowhere

    return {"module": only_in_working_dir.VALUE, "job_var": os.environ.get("SRFT_TEST_JOB_VAR")}

print("PROBE " + json.dumps(ray.get(probe.remote())))
ray.shutdown()
"""


@pytest.mark.slow
@pytest.mark.parametrize("cpu", [False, True], ids=["gpu-cluster-env", "cpu-layer-env"])
def test_a_ray_jobs_working_dir_reaches_the_workers(tmp_path, cpu):
    """``ray job submit --working-dir D --runtime-env-json ...``: the driver runs with the job's
    runtime env in RAY_JOB_CONFIG_JSON_ENV_VAR (what Ray's job supervisor sets); the launcher's
    own runtime env must not discard the job's working_dir or its environment variables."""
    working_dir = tmp_path / "job"
    working_dir.mkdir()
    (working_dir / "only_in_working_dir.py").write_text("VALUE = 42\n")
    driver = tmp_path / "driver.py"
    driver.write_text(RAY_JOB_DRIVER)
    job = {"runtime_env": {"working_dir": str(working_dir), "env_vars": {"SRFT_TEST_JOB_VAR": "from-the-job"}}}
    env = {k: v for k, v in subprocess_env().items() if k not in ("RAY_ADDRESS", "RAY_OVERRIDE_JOB_RUNTIME_ENV")}
    env["RAY_JOB_CONFIG_JSON_ENV_VAR"] = json.dumps(job)
    overrides = [f"cluster.cpu={str(cpu).lower()}", "cluster.ray_address=null"]
    out = subprocess.run(
        [sys.executable, str(driver), str(ROOT / "configs/toy_openrlhf_cpu.yaml"), *overrides],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    [probe] = [json.loads(line.removeprefix("PROBE ")) for line in out.stdout.splitlines() if line.startswith("PROBE ")]
    assert probe == {"module": 42, "job_var": "from-the-job"}


def test_a_resume_drops_the_logged_steps_after_its_checkpoint(tmp_path):
    files = run_files(tmp_path / "run")
    assert resumed_step(files) == 0  # no checkpoint: OpenRLHF starts over
    actor = files.checkpoints / "_actor"
    actor.mkdir(parents=True)
    for tag, step in (("global_step4", 4), ("best_global_step6\n", 6), ("something_else", None)):
        (actor / "latest").write_text(tag)
        assert resumed_step(files) == step, tag

    lines = [{"step": 1, "loss": 1.0}, {"step": 2, "loss": 0.5}, {"step": 2, "eval_toy_pass1": 0.4}, {"step": 3}]
    files.metrics.write_text("".join(json.dumps(r) + "\n" for r in lines) + '{"step": 4, "lo')  # cut by a kill
    drop_records_after(files.metrics, 2)
    assert [json.loads(line) for line in files.metrics.read_text().splitlines()] == lines[:3]
