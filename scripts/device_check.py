"""One GPU check, one JSON: environment, CUDA tests, kernel benchmark, toy runs (Triton vs torch).

Run through ``scripts/device_check.sh`` (usage in its header). Standard library only, so the
JSON is written even where torch itself fails to import. Parts, each in its own process group
under a timeout (all of them inside ``--budget`` seconds), the JSON rewritten after each; they
run in the order env, tests, toy_*, bench:

- ``env``: Python, torch (and its CUDA), triton, transformers, pytest versions; the GPU;
- ``tests``: ``scripts/device_kernels.sh tests`` (the kernel tests and every @requires_cuda
  test) with pytest, counted from its JUnit report; ``missing`` when pytest is not importable;
- ``bench``: ``scripts/device_kernels.sh bench`` (benchmarks/bench_kernels.py --tune); its JSON
  is included whole; ``no_gpu`` without CUDA;
- ``toy_base``: the toy base model (``model.path: toy``), built on first use into
  ``$SRFT_CACHE`` (pre-trained on the CPU: ~1-2 min), or found there;
- ``toy_triton``, ``toy_torch``: ``srft train --config configs/toy_cpu.yaml`` for ``--steps``
  steps with ``SRFT_KERNEL_BACKEND`` set to each backend (the local trainer puts the model
  on the GPU whenever CUDA is available); per-step loss / reward, held-out accuracy, wall time;
- ``toy_compare``: per-step |Δ loss| between the two (the rollouts are sampled from the same
  seeds, so they match while the weights do; a step whose mean reward differs has other
  rollouts and is excluded from the tolerance).

Without CUDA the GPU parts are ``no_gpu``, the toy run uses the torch backend on the CPU
(2 steps, 16 held-out problems; with ``--cpu-triton`` also the Triton backend, interpreted,
and the comparison), and the exit status is 2 unless ``--allow-no-gpu``.
Exit status: 0 when every part passed, 1 when one failed, timed out or could not run.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TOY_CONFIG = "configs/toy_cpu.yaml"
# Step 1 starts from the same weights and rollouts in both runs: only the kernels differ.
FIRST_STEP_LOSS_TOL = 1e-4
# Later steps: the weights drift apart by the kernels' rounding, compounded by Adam.
LOSS_TOL = 1e-3
OK = ("passed", "ok")

ENV_SNIPPET = r"""
import importlib, json, sys
info = {"python": sys.version.split()[0], "executable": sys.executable}
for name in ("torch", "triton", "transformers", "pytest", "numpy", "yaml", "tqdm", "safetensors", "tokenizers"):
    try:
        info[name] = getattr(importlib.import_module(name), "__version__", "?")
    except Exception as error:
        info[name] = None
        info.setdefault("import_errors", {})[name] = f"{type(error).__name__}: {error}"[:300]
if info["torch"]:
    import torch
    info["torch_cuda"] = torch.version.cuda
    info["cuda_available"] = torch.cuda.is_available()
    if info["cuda_available"]:
        props = torch.cuda.get_device_properties(0)
        info.update(
            gpu=torch.cuda.get_device_name(0),
            device_count=torch.cuda.device_count(),
            capability=".".join(map(str, torch.cuda.get_device_capability(0))),
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            multiprocessors=props.multi_processor_count,
            cudnn=torch.backends.cudnn.version(),
        )
print(json.dumps(info))
"""

BASE_SNIPPET = r"""
import json
from srft_openrlhf.data import toy
path = toy.base_model_path()
stats = path / toy.BASE_STATS_FILE
print(json.dumps({"path": str(path), "base_stats": json.loads(stats.read_text()) if stats.is_file() else None}))
"""


def now_utc() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class Check:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out = Path(args.out).resolve()
        self.work = Path(args.work).resolve()
        self.out.mkdir(parents=True, exist_ok=True)
        self.work.mkdir(parents=True, exist_ok=True)
        self.json_path = self.out / "device_check.json"
        self.log_path = self.out / "device_check.log"
        self.log_path.write_text("")
        self.deadline = time.monotonic() + args.budget
        self.report: dict[str, Any] = {
            "started_utc": now_utc(),
            "argv": sys.argv[1:],
            "python": args.python,
            "budget_s": args.budget,
            "parts": {},
        }
        self.gpu = False

    # ------------------------------------------------------------------ plumbing

    def write(self) -> None:
        tmp = self.json_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.report, indent=1, default=str) + "\n")
        os.replace(tmp, self.json_path)

    def log(self, text: str) -> None:
        print(text, flush=True)
        with self.log_path.open("a") as f:
            f.write(text + "\n")

    def timeout_for(self, wanted: float) -> float:
        """``wanted`` seconds, cut to what the budget leaves (10 s kept for the JSON)."""
        return max(0.0, min(wanted, self.deadline - time.monotonic() - 10))

    def run(self, name: str, cmd: list[str], timeout: float, env: dict[str, str] | None = None) -> dict[str, Any]:
        """Run ``cmd`` from the repository root in its own process group; output to the log."""
        shown = " ".join(arg if len(arg) < 200 else "<script>" for arg in cmd)
        self.log(f"\n===== [{now_utc()}] {name}: {shown} (timeout {timeout:.0f} s)")
        started = time.monotonic()
        lines: list[str] = []
        try:
            proc = subprocess.Popen(
                cmd,
                cwd=ROOT,
                env={**os.environ, **(env or {})},
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                errors="replace",
                start_new_session=True,
            )
        except OSError as error:
            return {"rc": None, "timed_out": False, "wall_s": 0.0, "output_tail": f"could not start: {error}"}

        def pump() -> None:
            assert proc.stdout is not None
            with self.log_path.open("a") as f:
                for line in proc.stdout:
                    sys.stdout.write(line)
                    f.write(line)
                    lines.append(line)
                    del lines[:-60]

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        timed_out = False
        try:
            rc: int | None = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    proc.wait(timeout=10)
                    break
                except subprocess.TimeoutExpired:
                    continue
            rc = proc.returncode
        reader.join(timeout=5)
        wall = round(time.monotonic() - started, 1)
        self.log(f"===== {name}: rc {rc}{' (timed out)' if timed_out else ''} after {wall} s")
        return {"rc": rc, "timed_out": timed_out, "wall_s": wall, "output_tail": "".join(lines)[-3000:]}

    def part(self, name: str, result: dict[str, Any]) -> dict[str, Any]:
        self.report["parts"][name] = result
        self.write()
        return result

    def out_of_time(self, name: str, wanted: float) -> bool:
        if self.timeout_for(wanted) < 20:
            self.part(name, {"status": "skipped", "reason": f"out of the {self.args.budget:.0f} s budget"})
            return True
        return False

    @staticmethod
    def status(run: dict[str, Any], inner_timeout: float | None = None) -> str:
        """passed / failed / timeout (ours, or the ``timeout`` that device_kernels.sh wraps around pytest)."""
        if run["timed_out"] or (inner_timeout is not None and run["rc"] != 0 and run["wall_s"] >= inner_timeout):
            return "timeout"
        return "passed" if run["rc"] == 0 else "failed"

    # ------------------------------------------------------------------ parts

    def env_part(self) -> None:
        run = self.run("env", [self.args.python, "-c", ENV_SNIPPET], self.timeout_for(120))
        info: dict[str, Any] = {}
        for line in reversed(run["output_tail"].splitlines()):
            if line.startswith("{"):
                info = json.loads(line)
                break
        nvidia_smi = shutil.which("nvidia-smi")
        if nvidia_smi:
            query = [nvidia_smi, "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"]
            try:
                smi = subprocess.run(query, capture_output=True, text=True, timeout=30)
                info["nvidia_smi"] = (smi.stdout or smi.stderr).strip()
            except (OSError, subprocess.TimeoutExpired) as error:
                info["nvidia_smi"] = f"failed: {error}"
        self.gpu = bool(info.get("cuda_available"))
        status = "passed" if run["rc"] == 0 and info.get("torch") else "failed"
        self.report["gpu"] = self.gpu
        self.part("env", {"status": status, **info, "wall_s": run["wall_s"], **({} if status in OK else run)})

    def tests_part(self) -> None:
        if not self.report["parts"].get("env", {}).get("pytest"):
            self.part(
                "tests", {"status": "missing", "reason": "pytest missing (carry its wheels: see device_check.sh)"}
            )
            return
        if self.out_of_time("tests", self.args.tests_timeout):
            return
        junit = self.work / "kernels_junit.xml"
        junit.unlink(missing_ok=True)
        timeout = self.timeout_for(self.args.tests_timeout)
        env = {"KERNELS_JUNIT": str(junit), "KERNELS_TEST_TIMEOUT": str(int(timeout) - 5), "OUT": str(self.out)}
        run = self.run("tests", ["bash", "scripts/device_kernels.sh", "tests"], timeout, env)
        result: dict[str, Any] = {"status": self.status(run, int(timeout) - 5), "wall_s": run["wall_s"]}
        result.update(junit_counts(junit))
        if not self.gpu:
            result["note"] = "no GPU: the CUDA tests were skipped"
        if result["status"] not in OK:
            result["output_tail"] = run["output_tail"]
        self.part("tests", result)

    def bench_part(self) -> None:
        if not self.gpu:
            self.part("bench", {"status": "no_gpu"})
            return
        if self.out_of_time("bench", self.args.bench_timeout):
            return
        bench = self.out / "kernels_bench.json"
        bench.unlink(missing_ok=True)
        timeout = self.timeout_for(self.args.bench_timeout)
        env = {"KERNELS_BENCH_TIMEOUT": str(int(timeout) - 5), "OUT": str(self.out)}
        run = self.run("bench", ["bash", "scripts/device_kernels.sh", "bench"], timeout, env)
        result: dict[str, Any] = {"status": self.status(run, int(timeout) - 5), "wall_s": run["wall_s"]}
        if bench.is_file():
            result["report"] = json.loads(bench.read_text())
        elif result["status"] == "passed":
            result["status"] = "failed"
        if result["status"] not in OK:
            result["output_tail"] = run["output_tail"]
        self.part("bench", result)

    def toy_env(self) -> dict[str, str]:
        cache = os.environ.get("SRFT_CACHE")
        if not cache:
            carried = ROOT / ".cache" / "srft-openrlhf"
            cache = str(carried if any(carried.glob("toy-base-*/config.json")) else self.work / "cache")
        return {"SRFT_CACHE": cache, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}

    def toy_base_part(self) -> bool:
        if self.out_of_time("toy_base", self.args.base_timeout):
            return False
        env = self.toy_env()
        run = self.run(
            "toy_base", [self.args.python, "-c", BASE_SNIPPET], self.timeout_for(self.args.base_timeout), env
        )
        result: dict[str, Any] = {"status": self.status(run), "wall_s": run["wall_s"], "cache": env["SRFT_CACHE"]}
        result["built_here"] = "[toy] building the toy base model" in run["output_tail"]
        for line in reversed(run["output_tail"].splitlines()):
            if line.startswith("{"):
                result.update(json.loads(line))
                break
        if result["status"] not in OK:
            result["output_tail"] = run["output_tail"]
        self.part("toy_base", result)
        return result["status"] in OK

    def toy_part(self, backend: str) -> None:
        name = f"toy_{backend}"
        if self.out_of_time(name, self.args.toy_timeout):
            return
        steps, eval_rows = (self.args.steps, self.args.eval_rows) if self.gpu else (2, 16)
        run_dir = self.work / name
        shutil.rmtree(run_dir, ignore_errors=True)
        settings = [
            f"train.steps={steps}",
            f"train.lr_warmup_steps={min(2, steps)}",
            "train.save_every=0",
            "train.eval_every=0",
            f"data.max_eval_rows={eval_rows}",
        ]
        cmd = [self.args.python, "-m", "srft_openrlhf.cli", "train", "--config", TOY_CONFIG]
        cmd += ["--output-dir", str(run_dir)] + [arg for s in settings for arg in ("--set", s)]
        env = {**self.toy_env(), "SRFT_KERNEL_BACKEND": backend}
        if backend == "triton" and not self.gpu:
            env["TRITON_INTERPRET"] = "1"  # --cpu-triton: the Triton interpreter (~20 s a step)
        run = self.run(name, cmd, self.timeout_for(self.args.toy_timeout), env)
        result: dict[str, Any] = {
            "status": self.status(run),
            "device": "cuda" if self.gpu else "cpu",
            "kernel_backend": backend,
            "settings": settings,
            "wall_s": run["wall_s"],
        }
        records = read_jsonl(run_dir / "metrics.jsonl")
        steps_done = [r for r in records if "loss" in r]
        result["losses"] = [r["loss"] for r in steps_done]
        result["rewards"] = [r.get("reward_mean") for r in steps_done]
        result["steps"] = steps_done
        summary = run_dir / "summary.json"
        if summary.is_file():
            result["summary"] = json.loads(summary.read_text())
        if result["status"] == "passed" and len(steps_done) != steps:
            result["status"] = "failed"
            result["reason"] = f"{len(steps_done)} training records for {steps} steps"
        if result["status"] not in OK:
            result["output_tail"] = run["output_tail"]
        self.part(name, result)

    def compare_part(self) -> None:
        parts = self.report["parts"]
        a, b = parts.get("toy_triton", {}), parts.get("toy_torch", {})
        if a.get("status") not in OK or b.get("status") not in OK:
            self.part("toy_compare", {"status": "skipped", "reason": "needs both toy runs"})
            return
        deltas = [abs(x - y) for x, y in zip(a["losses"], b["losses"])]
        same = [x == y for x, y in zip(a["rewards"], b["rewards"])]
        compared = [d for d, s in zip(deltas, same) if s]
        first_ok = bool(deltas) and same[0] and deltas[0] <= FIRST_STEP_LOSS_TOL
        ok = first_ok and all(d <= LOSS_TOL for d in compared)
        if not deltas:
            reason = "no losses to compare"
        elif not same[0]:
            reason = "step 1 rollouts differ (mean rewards differ): generation is not deterministic across processes"
        elif not ok:
            reason = "|Δ loss| above tolerance"
        else:
            reason = None
        self.part(
            "toy_compare",
            {
                "status": "passed" if ok else "failed",
                "reason": reason,
                "abs_dloss": deltas,
                "max_abs_dloss": max(deltas, default=None),
                "first_step_abs_dloss": deltas[0] if deltas else None,
                "same_reward_mean": same,
                "tolerance": {"first_step": FIRST_STEP_LOSS_TOL, "steps_with_same_rewards": LOSS_TOL},
            },
        )

    # ------------------------------------------------------------------ all

    def main(self) -> int:
        parts = set(self.args.parts.split(","))
        self.env_part()
        if "tests" in parts:
            self.tests_part()
        if "toy" in parts and self.report["parts"]["env"]["status"] in OK and self.toy_base_part():
            for backend in ("triton", "torch"):
                if backend == "triton" and not self.gpu and not self.args.cpu_triton:
                    self.part("toy_triton", {"status": "no_gpu"})
                    continue
                self.toy_part(backend)
            if self.gpu or self.args.cpu_triton:
                self.compare_part()
        if "bench" in parts:  # last: it measures, the parts before check
            self.bench_part()
        allowed = OK + (("no_gpu",) if self.args.allow_no_gpu else ())
        failed = [f"{k}: {v.get('status')}" for k, v in self.report["parts"].items() if v.get("status") not in allowed]
        self.report.update(finished_utc=now_utc(), failed=failed, ok=not failed)
        self.write()
        self.log("\n===== summary")
        for name, part in self.report["parts"].items():
            keys = ("wall_s", "passed", "failed", "skipped", "cuda_skipped", "losses", "rewards", "max_abs_dloss")
            brief = {k: part[k] for k in keys if k in part}
            summary = part.get("summary") or {}
            brief.update({k: summary[k] for k in ("accuracy_before", "accuracy_after") if k in summary})
            self.log(f"{name}: {part.get('status')} {json.dumps(brief, default=str)}")
        self.log(f"{'OK' if not failed else 'FAILED: ' + '; '.join(failed)}; wrote {self.json_path}")
        if failed:
            return 2 if not self.gpu and all(f.endswith("no_gpu") for f in failed) else 1
        return 0


def junit_counts(path: Path) -> dict[str, Any]:
    """passed / failed / errors / skipped of a pytest JUnit report, with the failing names."""
    if not path.is_file():
        return {"junit": "missing"}
    try:
        cases = list(ET.parse(path).getroot().iter("testcase"))
    except ET.ParseError as error:
        return {"junit": f"unreadable: {error}"}
    counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0, "cuda_skipped": 0}
    failing = []
    for case in cases:
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        if case.find("failure") is not None:
            counts["failed"] += 1
            failing.append(name)
        elif case.find("error") is not None:
            counts["errors"] += 1
            failing.append(name)
        elif (skip := case.find("skipped")) is not None:
            counts["skipped"] += 1
            counts["cuda_skipped"] += "CUDA" in (skip.get("message") or "")
        else:
            counts["passed"] += 1
    return {**counts, "failing": failing[:30]}


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=os.environ.get("OUT") or str(ROOT / "device_check_out"))
    parser.add_argument("--work", default="/tmp/srft-device-check", help="toy runs, toy base cache, JUnit report")
    parser.add_argument("--python", default=os.environ.get("PYTHON") or sys.executable)
    parser.add_argument("--parts", default="tests,bench,toy", help="comma-separated subset (env always runs)")
    parser.add_argument("--steps", type=int, default=8, help="toy training steps per backend (GPU)")
    parser.add_argument("--eval-rows", type=int, default=200, help="toy held-out problems (GPU)")
    parser.add_argument("--budget", type=float, default=420, help="seconds for all parts together")
    parser.add_argument("--tests-timeout", type=float, default=150)
    parser.add_argument("--bench-timeout", type=float, default=120)
    parser.add_argument("--base-timeout", type=float, default=180)
    parser.add_argument("--toy-timeout", type=float, default=120, help="per toy run")
    parser.add_argument("--allow-no-gpu", action="store_true", help="exit 0 when only the GPU parts were skipped")
    parser.add_argument(
        "--cpu-triton", action="store_true", help="no GPU: run the Triton toy run under TRITON_INTERPRET=1 and compare"
    )
    return Check(parser.parse_args(argv)).main()


if __name__ == "__main__":
    raise SystemExit(main())
