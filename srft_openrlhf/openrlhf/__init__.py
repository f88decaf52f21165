"""Cluster backend: SRFT on OpenRLHF 0.11.2's Ray PPO trainer, extended without a fork.

``srft train --backend openrlhf`` calls ``launcher.run``: it writes the run's data files,
translates the SRFT config into OpenRLHF's dotted flags and runs
``python -m openrlhf.cli.train_ppo_ray`` in-process (``runpy``) with the entries of
``patches.PATCHES`` assigned into OpenRLHF's modules: subclasses of its classes (a Ray actor
class is unwrapped to its Python class, subclassed and re-wrapped with the same Ray options)
and two function replacements. What they change:

1. samples: each prompt's n vLLM rollouts are followed by its demonstration(s), tokenised
   by ``srft_openrlhf.data.encode_example``, rewarded by the same reward function, marked
   ``info["is_demo"]``, with rollout log-probs 0 (πβ = 1);
2. experience: after OpenRLHF's old log-prob forward, demo rows' old log-probs are set to 0
   and the advantages are ``srft_openrlhf.algorithm.batch_advantages`` over the augmented
   group (Eq. 7);
3. actor loss: the training step computes token log-probs and entropy with
   ``srft_openrlhf.kernels`` and calls ``srft_openrlhf.algorithm.srft_loss`` with the
   ``StepTotals`` of its optimizer step, so that the micro-batches add up to the step's loss;
   DeepSpeed's backward and step are OpenRLHF's (``iter_grad_accum_global_norm`` is replaced
   so its accumulation windows are the step's);
4. data order: ``prepare_datasets`` is replaced so the prompts are trained in the order of the
   training file, which holds one seeded permutation per epoch (as in the local backend);
5. Ray actors: the trainer and generator actors install the patches in their own processes
   and write ``metrics.jsonl`` (``srft_openrlhf.runs.records``).

``HOOK_POINTS`` lists every place of OpenRLHF this relies on; ``hooks.check_hook_points``
verifies them against the installed OpenRLHF, so that an upgrade that moves one fails with
a message naming it. Importing this package imports neither openrlhf, ray nor vllm.
"""

from __future__ import annotations

from dataclasses import dataclass

from srft_openrlhf.openrlhf.layout import GroupLayout as GroupLayout  # re-exported: the launcher's and tests' import
from srft_openrlhf.openrlhf.layout import group_layout as group_layout

OPENRLHF_VERSION = "0.11.2"  # the version the hook points below were read from


@dataclass(frozen=True)
class HookPoint:
    """One thing of OpenRLHF that the SRFT patches rely on.

    ``target`` is ``"module:Qualified.name"`` (a Ray actor class counts as the class it
    wraps). ``params``: the parameter names the function must start with (``self``
    excluded). ``reads``: names the function's code must look up (module globals, attributes
    or string keys) for a patch of that name to reach it. ``fields``: dataclass fields.
    """

    target: str
    srft: str
    params: tuple[str, ...] | None = None
    reads: tuple[str, ...] = ()
    fields: tuple[str, ...] = ()


_SAMPLES = "openrlhf.trainer.ppo_utils.samples_generator"
_MAKER = "openrlhf.trainer.ppo_utils.experience_maker"
_ACTOR = "openrlhf.trainer.ray.ppo_actor"
_SYNC = "openrlhf.trainer.ppo_trainer"
_ASYNC = "openrlhf.trainer.ppo_trainer_async"

HOOK_POINTS: tuple[HookPoint, ...] = (
    HookPoint(
        "openrlhf.cli.train_ppo_ray:train",
        "the driver replaces these module attributes before running the CLI",
        reads=("get_strategy", "PolicyModelActor", "PPOTrainer", "PPOTrainerAsync"),
    ),
    HookPoint(
        "openrlhf.cli.train_ppo_ray:train",
        "--algo.advantage.is_correction_level makes the vLLM engines return sampling log-probs (π_old)",
        reads=("is_correction_level", "processed_logprobs"),
    ),
    HookPoint(
        f"{_SAMPLES}:SamplesGenerator._process_response_into_experience",
        "the engine's log-probs become Experience.rollout_log_probs",
        reads=("rollout_log_probs",),
    ),
    HookPoint("openrlhf.utils:get_strategy", "wrapped to attach the SRFT config as args.srft", params=("args",)),
    HookPoint(
        f"{_SYNC}:PPOTrainer.__init__",
        "SRFTPPOTrainer: builds SRFTSamplesGenerator through the module global",
        params=(
            "pretrain",
            "strategy",
            "actor_model_group",
            "critic_model_group",
            "reward_model_group",
            "reference_model_group",
            "vllm_engines",
        ),
        reads=("SamplesGenerator",),
    ),
    HookPoint(
        f"{_SYNC}:PPOTrainer.__init__",
        "reads the prompts through prepare_datasets_in_file_order",
        reads=("prepare_datasets",),
    ),
    HookPoint(
        f"{_ASYNC}:GenerateSamplesActor.__init__",
        "reads the prompts through prepare_datasets_in_file_order",
        reads=("prepare_datasets",),
    ),
    HookPoint(
        f"{_SYNC}:prepare_datasets",
        "its prompt dataloader is made unshuffled (the file's order)",
        params=("strategy", "tokenizer"),
        reads=("setup_dataloader",),
    ),
    HookPoint(
        "openrlhf.utils.deepspeed:DeepspeedStrategy.setup_dataloader",
        "called with shuffle=False",
        params=("replay_buffer", "batch_size", "pin_memory", "shuffle"),
    ),
    HookPoint(
        f"{_SYNC}:BasePPOTrainer.__init__",
        "builds SRFTExperienceMaker through the module global",
        reads=("RemoteExperienceMaker",),
    ),
    HookPoint(
        f"{_SYNC}:BasePPOTrainer.train_step",
        "merges _compute_rollout_stats into the step's status (rollout-only reward/length series)",
        params=("rollout_samples", "global_step"),
        reads=("_compute_rollout_stats",),
    ),
    HookPoint(
        f"{_SYNC}:BasePPOTrainer.save_logs_and_checkpoints",
        "extended: also writes the run's metrics.jsonl",
        params=("global_step", "logs_dict", "client_states"),
    ),
    HookPoint(
        f"{_SYNC}:BasePPOTrainer.save_best_checkpoint",
        "extended: also writes each periodic evaluation's metrics to metrics.jsonl (sync and async trainers)",
        params=("eval_metrics", "global_step", "client_states"),
    ),
    HookPoint(
        f"{_SYNC}:BasePPOTrainer._compute_rollout_stats",
        "overridden: rollout reward/length statistics without the demonstrations",
        params=("experiences",),
    ),
    HookPoint(
        f"{_ASYNC}:PPOTrainerAsync.__init__",
        "SRFTPPOTrainerAsync: starts SRFTGenerateSamplesActor and SRFTTrainingActor",
        reads=("GenerateSamplesActor", "TrainingActor"),
    ),
    HookPoint(
        f"{_ASYNC}:GenerateSamplesActor.__init__",
        "builds SRFTSamplesGenerator through the module global",
        reads=("SamplesGenerator",),
    ),
    HookPoint(
        f"{_ASYNC}:TrainingActor._compute_rollout_stats",
        "as BasePPOTrainer._compute_rollout_stats",
        params=("experiences",),
    ),
    HookPoint(
        f"{_ASYNC}:TrainingActor.broadcast_to_vllm",
        "SRFTTrainingActor repeats it (lock, partial-rollout pause) with the base class named",
        params=(),
        reads=(
            "vllm_lock",
            "acquire",
            "release",
            "_partial_rollout",
            "pause_generation",
            "resume_generation",
            "broadcast_to_vllm",
        ),
    ),
    HookPoint(
        f"{_SAMPLES}:SamplesGenerator.__init__",
        "subclassed by SRFTSamplesGenerator",
        params=("strategy", "prompts_dataloader", "eval_dataloader", "tokenizer", "vllm_engines"),
    ),
    HookPoint(
        f"{_SAMPLES}:SamplesGenerator.generate_samples",
        "overridden: n rollouts per prompt from vLLM, then the prompt's demonstration(s)",
    ),
    HookPoint(
        f"{_SAMPLES}:SamplesGenerator._dispatch_prompts_to_vllm",
        "reads the per-call rollout count from generate_kwargs; asks for log-probs with is_correction_level; "
        "extended: starts grading the prompts' demonstrations",
        params=("prompts", "labels"),
        reads=("n_samples_per_prompt", "is_correction_level"),
    ),
    HookPoint(
        f"{_MAKER}:RemoteExperienceMaker.make_experience_batch",
        "calls the two overridden steps",
        params=("rollout_samples",),
        reads=("make_experience", "compute_advantages_and_returns"),
    ),
    HookPoint(
        f"{_MAKER}:RemoteExperienceMaker.make_experience",
        "replaced: π_old = the engine's log-probs (0 for demos), entropy sums from the actor, reference forward",
        params=("samples_list",),
    ),
    HookPoint(
        f"{_MAKER}:RemoteExperienceMaker._flatten_results",
        "gathers the actors' per-micro-batch results",
        params=("refs", "duplicate_factor"),
    ),
    HookPoint(
        "openrlhf.trainer.ray.launcher:RayActorGroup.async_run_method_batch",
        "runs SRFTPolicyModelActor.srft_entropy_sums on the micro-batches",
        params=("method_name",),
    ),
    HookPoint(
        "openrlhf.trainer.ray.launcher:BaseModelActor.execute_batch",
        "calls the method by name",
        params=("method_name", "all_data", "start_idx", "end_idx"),
        reads=("getattr",),
    ),
    HookPoint(
        f"{_MAKER}:RemoteExperienceMaker.compute_advantages_and_returns",
        "overridden: Eq. 7 advantages over the demo-augmented group",
        params=("experiences",),
    ),
    HookPoint(
        f"{_ACTOR}:PolicyModelActor.init_model_from_pretrained",
        "SRFTPolicyModelActor: builds SRFTActorPPOTrainer through the module global",
        params=("strategy", "pretrain", "max_steps", "vllm_engines"),
        reads=("ActorPPOTrainer",),
    ),
    HookPoint(
        f"{_ACTOR}:ActorPPOTrainer.ppo_train",
        "overridden: adds the SRFT loss metrics to the step status",
        params=("kl_ctl",),
        reads=("training_step",),
    ),
    HookPoint(
        f"{_ACTOR}:ActorPPOTrainer.ppo_train",
        "pairs micro-batches with loss_batch_info through the module global, replaced by srft_step_windows",
        reads=("iter_grad_accum_global_norm", "accumulated_gradient"),
    ),
    HookPoint(
        "openrlhf.utils.loss_utils:iter_grad_accum_global_norm",
        "srft_step_windows takes its place and arguments",
        params=("data_iter", "strategy", "accumulated_gradient", "mask_fn"),
    ),
    HookPoint(
        "openrlhf.utils.loss_utils:_get_dp_group",
        "the DP group the step's totals are gathered over",
        params=("strategy",),
    ),
    HookPoint(
        f"{_ACTOR}:ActorPPOTrainer.training_step",
        "overridden: fused log-probs/entropy + srft_loss",
        params=("experience", "kl_ctl", "step", "loss_batch_info"),
    ),
    HookPoint(
        "openrlhf.models.actor:Actor.forward",
        "called for the logits of the training step",
        params=("sequences", "action_mask", "attention_mask", "return_output"),
    ),
    HookPoint(
        "openrlhf.utils.deepspeed:DeepspeedStrategy.backward",
        "the loss backward",
        params=("loss", "model"),
        reads=("backward",),
    ),
    # DeepSpeedEngine.backward divides the loss by this (its nvtx decorator hides its code from the check)
    HookPoint(
        "deepspeed.runtime.engine:DeepSpeedEngine.gradient_accumulation_steps",
        "the SRFT training step multiplies the loss by it, undoing DeepSpeed's division",
        params=(),
    ),
    HookPoint(
        "openrlhf.utils.deepspeed:DeepspeedStrategy.save_ckpt",
        "replaced by checkpoint.atomic_save_ckpt, which calls it with nothing removed and no `latest`",
        params=(
            "model",
            "save_dir",
            "tag",
            "max_num",
            "max_mem",
            "client_state",
            "save_latest",
            "metric_value",
            "metric_key",
        ),
        reads=("save_checkpoint", "rmtree"),
    ),
    HookPoint(
        "openrlhf.utils.deepspeed:DeepspeedStrategy._read_ckpt_metric",
        "checkpoint.prune ranks old checkpoints by it",
        params=("ckpt_dir",),
    ),
    HookPoint(
        "openrlhf.trainer.ray.ppo_actor:PolicyModelActor.save_checkpoint",
        "the checkpoint OpenRLHF resumes from: strategy.save_ckpt of the policy",
        reads=("save_ckpt",),
    ),
    HookPoint(
        "openrlhf.utils.deepspeed:DeepspeedStrategy.optimizer_step",
        "the optimizer step",
        params=("_optimizer", "model", "_scheduler"),
    ),
    HookPoint(
        "openrlhf.trainer.ppo_utils.experience:Experience",
        "samples and experiences are these",
        fields=(
            "sequences",
            "attention_mask",
            "action_mask",
            "action_log_probs",
            "base_action_log_probs",
            "rollout_log_probs",
            "advantages",
            "returns",
            "rewards",
            "scores",
            "response_length",
            "truncated",
            "total_length",
            "index",
            "prompts",
            "labels",
            "images",
            "mm_train_inputs",
            "info",
        ),
    ),
    HookPoint(
        "openrlhf.utils.agent:SingleTurnAgentExecutor.__init__",
        "loads reward_func from the .py file given as --reward.remote_url",
        reads=("reward_func",),
    ),
    HookPoint(
        "openrlhf.utils.agent:SingleTurnAgentExecutor._fetch_rewards_via_func",
        "calls reward_func(queries, prompts, labels)",
        params=("queries_list", "prompts_list", "labels_list"),
    ),
)
