"""One configuration schema for both backends (local and OpenRLHF).

A run is described by a YAML file whose top-level sections are the dataclasses below;
``--set section.key=value`` overrides any key. Unknown keys are errors that name the key
and suggest the closest known one, so a typo never silently falls back to a default.

The ``loss`` section is :class:`srft_openrlhf.algorithm.LossConfig`: ``loss.preset``
selects a paper baseline/ablation, and any other ``loss.*`` key overrides that preset.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from srft_openrlhf.algorithm import LossConfig
from srft_openrlhf.errors import ConfigError

# Every value check that does not depend on the backend is a section's ``validate()``, run by
# ``build_config``; each backend adds its own constraints in one function (local:
# ``local.trainer.check_config``, openrlhf: ``openrlhf.plan.check_config``).

DTYPES = ("bf16", "fp16", "fp32")
GENERATORS = ("auto", "vllm", "hf")
ENGINES = ("torch", "deepspeed")
ZERO_STAGES = (0, 1, 2, 3)
SCHEDULES = ("joint", "sft_then_rl", "rl_then_sft")


@dataclass
class ModelConfig:
    path: str = "toy"  # Hugging Face folder or hub name; "toy" = the cached toy base model
    dtype: str = "bf16"  # bf16 | fp16 | fp32 (training and generation)
    trust_remote_code: bool = False
    gradient_checkpointing: bool = False

    def validate(self) -> None:
        if self.dtype not in DTYPES:
            raise ConfigError(f"model.dtype: {self.dtype!r} is not one of {', '.join(DTYPES)}")


@dataclass
class DataConfig:
    train: str = "toy"  # local .json/.jsonl/.parquet, a hub dataset name, or "toy"
    split: str = "train"
    eval: str | None = None  # held-out set for accuracy before/after and periodic eval
    prompt_key: str = "prompt"
    answer_key: str = "answer"
    demo_key: str | None = "demonstration"
    template: str = "srft"  # srft | qwen_math | none | chat (the tokenizer's own template)
    max_prompt_len: int = 1024
    max_response_len: int = 8192
    skip_invalid_rows: bool = False
    max_train_rows: int | None = None
    max_eval_rows: int | None = None

    def validate(self) -> None:
        for key in ("max_prompt_len", "max_response_len"):
            if getattr(self, key) < 1:
                raise ConfigError(f"data.{key} must be >= 1, got {getattr(self, key)}")


@dataclass
class RolloutConfig:
    n_samples_per_prompt: int = 8
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 8192
    generator: str = "auto"  # auto | vllm | hf
    gpu_memory_utilization: float = 0.5
    eval_temperature: float = 0.0  # greedy held-out accuracy
    reward: str = "math"  # math | choice
    reward_mode: str = "either"  # either | math_verify | oat
    reward_timeout_s: float = 5.0
    reward_workers: int = 2

    @staticmethod
    def check_sampling(n: int, temperature: float, top_p: float, max_new_tokens: int) -> None:
        """The sampling values any generation call needs (temperature 0 = greedy is allowed here)."""
        if n < 1 or max_new_tokens < 1:
            raise ConfigError(f"rollout: n_samples_per_prompt ({n}) and max_new_tokens ({max_new_tokens}) must be >= 1")
        if temperature < 0 or not 0 < top_p <= 1:
            raise ConfigError(f"rollout: need temperature >= 0 and 0 < top_p <= 1, got {temperature} and {top_p}")

    def validate(self) -> None:
        if self.generator not in GENERATORS:
            raise ConfigError(f"rollout.generator: {self.generator!r} is not one of {', '.join(GENERATORS)}")
        self.check_sampling(self.n_samples_per_prompt, self.temperature, self.top_p, self.max_new_tokens)
        if not self.temperature > 0:
            raise ConfigError(
                f"rollout.temperature must be > 0 for training rollouts, got {self.temperature} "
                "(greedy decoding is rollout.eval_temperature)"
            )
        if not self.eval_temperature >= 0:
            raise ConfigError(f"rollout.eval_temperature must be >= 0 (0 = greedy), got {self.eval_temperature}")


@dataclass
class TrainConfig:
    steps: int = 500
    prompts_per_step: int = 128
    lr: float = 1e-6
    lr_warmup_steps: int = 0
    weight_decay: float = 0.0
    adam_betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 1.0
    micro_batch_size: int = 4
    engine: str = "torch"  # torch | deepspeed
    zero_stage: int = 0
    seed: int = 42
    schedule: str = "joint"  # joint | sft_then_rl | rl_then_sft (paper Table 1)
    switch_step: int = 0  # for sequential schedules: steps of the first phase
    async_enable: bool = False
    max_staleness: int = 1
    save_every: int = 50
    eval_every: int = 0
    keep_checkpoints: int = 2
    num_threads: int = 0  # local backend: torch CPU threads (0 = torch's default)

    def validate(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"train.schedule: {self.schedule!r} is not one of {', '.join(SCHEDULES)}")
        if self.schedule != "joint" and not 0 < self.switch_step < self.steps:
            raise ConfigError(
                f"train.switch_step: train.schedule={self.schedule} needs 0 < switch_step < train.steps "
                f"({self.steps}), got {self.switch_step}"
            )
        for key in ("prompts_per_step", "micro_batch_size", "keep_checkpoints"):
            if getattr(self, key) < 1:
                raise ConfigError(f"train.{key} must be >= 1, got {getattr(self, key)}")
        for key in ("steps", "save_every", "eval_every", "max_staleness", "num_threads"):
            if getattr(self, key) < 0:
                raise ConfigError(f"train.{key} must be >= 0, got {getattr(self, key)}")
        # Optimizer values, checked here rather than met as torch's ValueError once the model is built.
        if not 0 < self.lr < float("inf"):
            raise ConfigError(f"train.lr must be > 0 and finite, got {self.lr} (the paper uses 1e-6)")
        if not 0 <= self.weight_decay < float("inf"):
            raise ConfigError(f"train.weight_decay must be >= 0 and finite, got {self.weight_decay}")
        if not self.grad_clip >= 0:
            raise ConfigError(f"train.grad_clip must be > 0, or 0 to turn clipping off, got {self.grad_clip}")
        if not all(0 <= b < 1 for b in self.adam_betas):
            raise ConfigError(
                f"train.adam_betas must be two numbers in [0, 1), got {list(self.adam_betas)} (e.g. [0.9, 0.999])"
            )
        if not 0 <= self.lr_warmup_steps <= self.steps:
            raise ConfigError(
                f"train.lr_warmup_steps: {self.lr_warmup_steps} must be between 0 and train.steps ({self.steps})"
            )
        if self.engine not in ENGINES:
            raise ConfigError(f"train.engine: {self.engine!r} is not one of {', '.join(ENGINES)}")
        if self.zero_stage not in ZERO_STAGES:
            raise ConfigError(f"train.zero_stage: {self.zero_stage} is not one of 0, 1, 2, 3")


@dataclass
class LoggingConfig:
    output_dir: str = "runs/srft"
    log_every: int = 1
    wandb_project: str | None = None
    wandb_run_name: str | None = None
    tensorboard: bool = False

    def validate(self) -> None:
        """Values only; whether wandb / tensorboard are installed is each backend's check."""
        if self.log_every < 1:
            raise ConfigError(f"logging.log_every must be >= 1, got {self.log_every}")


@dataclass
class ClusterConfig:
    """OpenRLHF backend only: how the Ray cluster is laid out."""

    nodes: int = 1
    gpus_per_node: int = 8
    vllm_num_engines: int = 4
    vllm_tensor_parallel_size: int = 1
    colocate_all: bool = False  # sync mode: vLLM and training share every GPU (vllm_num_engines × TP = all)
    ray_address: str | None = None  # None: RAY_ADDRESS or a new local Ray; "auto": the `ray start` cluster
    extra_args: list[str] = field(default_factory=list)  # appended to OpenRLHF's flags as they are
    actor_gpus: int | None = None  # training GPUs; None: all GPUs vLLM does not take (all, when colocated)
    attn_implementation: str = "flash_attention_2"  # OpenRLHF --ds.attn_implementation
    enable_prefix_caching: bool = True  # vLLM: the n rollouts of a prompt share its KV cache
    enforce_eager: bool = False  # vLLM: no CUDA graphs
    adam_offload: bool = False  # DeepSpeed: optimizer states in CPU memory
    save_hf_checkpoints: bool = False  # also save Hugging Face weights with every checkpoint
    cpu: bool = False  # no GPU: OpenRLHF through srft_openrlhf/openrlhf/cpu_compat.py (the laptop path)

    def validate(self) -> None:
        for key in ("nodes", "gpus_per_node", "vllm_num_engines", "vllm_tensor_parallel_size"):
            if getattr(self, key) < 1:
                raise ConfigError(f"cluster.{key} must be at least 1, got {getattr(self, key)}")


@dataclass
class SRFTConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)

    def validate(self) -> None:
        """Every backend-independent value check, section by section (ConfigError naming the key)."""
        for section in (self.model, self.data, self.rollout, self.loss, self.train, self.logging, self.cluster):
            section.validate()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _coerce(value: Any, typ: Any, key: str) -> Any:
    """Convert a YAML or command-line value to the declared field type, or raise ConfigError."""
    origin = typing.get_origin(typ)
    args = typing.get_args(typ)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None or (isinstance(value, str) and value.lower() in ("null", "none")):
            if type(None) in args:
                return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{key}: cannot parse {value!r}")
    if origin in (tuple, list):
        if isinstance(value, str):
            value = yaml.safe_load(value) if value.strip().startswith("[") else value.split(",")
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{key}: expected {len(args)} values, got {value!r}")
            return tuple(_coerce(v, a, key) for v, a in zip(value, args))
        inner = args[0] if args else str
        return origin(_coerce(v, inner, key) for v in value)
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "0", "no", "off"):
            return False
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if typ is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        try:
            f = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected an integer, got {value!r}") from None
        if f != int(f):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return int(f)
    if typ is float:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected a number, got {value!r}") from None
    if typ is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return str(value)
    if value is None or isinstance(value, typ if isinstance(typ, type) else object):
        return value
    raise ConfigError(f"{key}: cannot parse {value!r} as {typ}")


def _unknown(key: str, known: list[str]) -> ConfigError:
    close = difflib.get_close_matches(key.rsplit(".", 1)[-1], known, n=1)
    hint = f" (did you mean '{key.rsplit('.', 1)[0] + '.' if '.' in key else ''}{close[0]}'?)" if close else ""
    return ConfigError(f"unknown config key '{key}'{hint}")


def _apply(obj: Any, values: dict[str, Any], prefix: str) -> None:
    types = _field_types(type(obj))
    for k, v in values.items():
        key = f"{prefix}{k}"
        if k not in types:
            raise _unknown(key, list(types))
        current = getattr(obj, k)
        if dataclasses.is_dataclass(current):
            if not isinstance(v, dict):
                raise ConfigError(f"{key}: expected a mapping of {list(_field_types(type(current)))}")
            _apply(current, v, key + ".")
        else:
            setattr(obj, k, _coerce(v, types[k], key))


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """``["train.lr=1e-5", "loss.preset=grpo"]`` -> nested dict (values parsed as YAML scalars)."""
    nested: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        d = nested
        for p in parts[:-1]:
            d = d.setdefault(p, {})
            if not isinstance(d, dict):
                raise ConfigError(f"--set {key}: '{p}' is both a value and a section")
        d[parts[-1]] = value
    return nested


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def build_config(values: dict[str, Any]) -> SRFTConfig:
    """Build a config from a nested dict. ``loss.preset`` is applied before other loss keys."""
    cfg = SRFTConfig()
    values = dict(values)
    loss_values = dict(values.pop("loss", None) or {})
    if not isinstance(loss_values, dict):
        raise ConfigError("loss: expected a mapping")
    preset = loss_values.pop("preset", None)
    if preset is not None:
        try:
            cfg.loss = LossConfig.from_preset(str(preset))
        except (KeyError, ValueError) as e:
            raise ConfigError(f"loss.preset: {e}") from None
    _apply(cfg, values, "")
    _apply(cfg.loss, loss_values, "loss.")
    cfg.validate()
    return cfg


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> SRFTConfig:
    """Load a YAML config file (optional) and apply ``--set`` overrides."""
    values: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            loaded = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: invalid YAML: {e}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{p}: expected a mapping of sections at the top level")
        values = loaded
    values = _merge(values, parse_overrides(overrides or []))
    return build_config(values)


def save_config(cfg: SRFTConfig, path: str | Path) -> None:
    def plain(x: Any) -> Any:
        if isinstance(x, tuple):
            return list(x)
        if isinstance(x, dict):
            return {k: plain(v) for k, v in x.items()}
        if isinstance(x, list):
            return [plain(v) for v in x]
        return x

    Path(path).write_text(yaml.safe_dump(plain(cfg.to_dict()), sort_keys=False))
