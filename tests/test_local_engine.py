"""Training engines of the local backend: torch (fast) and DeepSpeed ZeRO 0/2/3 on CPU."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import requires_deepspeed

from srft_openrlhf.errors import CheckpointError, ConfigError
from srft_openrlhf.local.engine import make_engine, make_reference

# Row 0 is left-padded (prompt) and right-padded (response); row 1 is full.
INPUT_IDS = torch.tensor([[0, 0, 19, 358, 21, 40, 41, 0], [323, 333, 288, 28, 377, 284, 278, 373]])
MASK = torch.tensor([[0, 0, 1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1, 1, 1]])


def engine(model_dir, kind="torch", zero_stage=0, dtype="fp32", lr=1e-2, warmup_steps=0, **kw):
    args = dict(
        engine=kind,
        zero_stage=zero_stage,
        dtype=dtype,
        lr=lr,
        weight_decay=0.01,
        betas=(0.9, 0.99),
        grad_clip=1.0,
        warmup_steps=warmup_steps,
        total_steps=10,
        seed=0,
        gradient_checkpointing=False,
        device="cpu",
    )
    args.update(kw)
    return make_engine(str(model_dir), **args)


def nll(eng, rows=slice(None)) -> torch.Tensor:
    """Mean token NLL of the batch rows (a simple SFT loss)."""
    logprobs, _ = eng.token_logprobs(INPUT_IDS[rows], MASK[rows])
    mask = (MASK[rows, 1:] * MASK[rows, :-1]).float()
    return -(logprobs * mask).sum() / mask.sum()


def train_step(eng) -> tuple[float, dict]:
    """One optimizer step over two micro-batches (gradient accumulation)."""
    total = 0.0
    for rows in (slice(0, 1), slice(1, 2)):
        loss = nll(eng, rows) / 2
        eng.backward(loss)
        total += loss.item()
    return total, eng.step()


def update(eng) -> dict[str, torch.Tensor]:
    """What one ``train_step`` adds to each weight, in fp32."""
    before = {name: w.float().clone() for name, w in eng.named_weights()}
    train_step(eng)
    return {name: w.float() - before[name] for name, w in eng.named_weights()}


def relative_difference(update: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> float:
    """‖update − reference‖ / ‖reference‖ over all weights: 1 for a missing step, 1 for a
    doubled learning rate, 0.5 for a halved one."""
    assert set(update) == set(reference)
    diff = sum(float((update[n] - reference[n]).square().sum()) for n in reference)
    return (diff / sum(float(reference[n].square().sum()) for n in reference)) ** 0.5


# bf16 vs fp32 gradients: Adam's first step is about lr × sign(gradient), and the signs differ
# only where the gradient is tiny; measured 0.08 (torch autocast) and 0.09 (DeepSpeed ZeRO-2).
BF16_UPDATE_TOLERANCE = 0.2


@torch.no_grad()
def reference_logprobs(model, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """fp64, each row alone and unpadded: log π of the next token and entropy, as [B, L-1]."""
    model64 = copy.deepcopy(model).double()
    lp = torch.zeros(INPUT_IDS.shape[0], INPUT_IDS.shape[1] - 1, dtype=torch.float64)
    ent = torch.zeros_like(lp)
    for b in range(INPUT_IDS.shape[0]):
        idx = MASK[b].nonzero().squeeze(1)
        first, last = int(idx[0]), int(idx[-1])
        logits = model64(input_ids=INPUT_IDS[b : b + 1, first : last + 1]).logits[0, :-1] / temperature
        p = logits.softmax(-1)
        logp = logits.log_softmax(-1)
        targets = INPUT_IDS[b, first + 1 : last + 1]
        lp[b, first:last] = logp.gather(1, targets[:, None]).squeeze(1)
        ent[b, first:last] = -(p * logp).sum(-1)
    return lp, ent


@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_token_logprobs_match_float64_reference(tiny_model_dir, temperature):
    eng = engine(tiny_model_dir)
    lp, ent = eng.token_logprobs(INPUT_IDS, MASK, temperature=temperature)
    ref_lp, ref_ent = reference_logprobs(eng.model, temperature)
    assert lp.shape == ent.shape == (2, 7) and lp.dtype == torch.float32
    assert torch.allclose(lp.double(), ref_lp, atol=1e-5)
    assert torch.allclose(ent.double(), ref_ent, atol=1e-5)
    # Positions whose context or target is padding are exactly zero.
    assert lp[0, :2].eq(0).all() and lp[0, 6].eq(0) and ent[0, :2].eq(0).all()


def test_logprob_gradients(tiny_model_dir):
    eng = engine(tiny_model_dir)
    lp, ent = eng.token_logprobs(INPUT_IDS, MASK)
    assert lp.requires_grad and not ent.requires_grad
    _, ent = eng.token_logprobs(INPUT_IDS, MASK, entropy_grad=True)
    assert ent.requires_grad
    # The gradient reaches the LM head (fused path) and the embeddings.
    lp.sum().backward()
    assert eng.model.get_output_embeddings().weight.grad.abs().sum() > 0
    assert eng.model.get_input_embeddings().weight.grad.abs().sum() > 0


def test_two_steps_decrease_nll(tiny_model_dir):
    eng = engine(tiny_model_dir)
    before = nll(eng).item()
    for _ in range(2):
        _, stats = train_step(eng)
        assert stats["grad_norm"] > 0
    assert nll(eng).item() < before - 0.1


def test_linear_warmup_then_constant(tiny_model_dir):
    eng = engine(tiny_model_dir, lr=1e-3, warmup_steps=2)
    lrs = [train_step(eng)[1]["lr"] for _ in range(3)]
    assert lrs == pytest.approx([5e-4, 1e-3, 1e-3])


def test_no_weight_decay_on_biases_and_norms(tiny_model_dir):
    eng = engine(tiny_model_dir)
    decay = {id(p): g["weight_decay"] for g in eng.optimizer.param_groups for p in g["params"]}
    for name, p in eng.model.named_parameters():
        assert decay[id(p)] == (0.01 if p.dim() >= 2 else 0.0), name


def test_gradient_checkpointing_gives_the_same_step(tiny_model_dir):
    plain, ckpt = engine(tiny_model_dir), engine(tiny_model_dir, gradient_checkpointing=True)
    assert train_step(plain)[1]["grad_norm"] == pytest.approx(train_step(ckpt)[1]["grad_norm"], rel=1e-5)


def test_bf16_keeps_fp32_master_weights(tiny_model_dir):
    fp32, bf16 = engine(tiny_model_dir), engine(tiny_model_dir, dtype="bf16", lr=1e-6)
    lp32, _ = fp32.token_logprobs(INPUT_IDS, MASK)
    lp16, _ = bf16.token_logprobs(INPUT_IDS, MASK)
    assert (lp16 - lp32).abs().max() < 0.05
    # the masters are the checkpoint's fp32 weights, bit for bit
    assert all(p.dtype == torch.float32 for p in bf16.model.parameters())
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(bf16.named_weights(), fp32.named_weights()))
    # An lr-1e-6 update (~1e-6 a weight) would round away on bf16 weights (resolution ~1e-4
    # here); on the fp32 masters it is the fp32 engine's update, up to bf16 gradients.
    reference = update(engine(tiny_model_dir, lr=1e-6))
    assert max(float(d.abs().max()) for d in reference.values()) < 2e-6
    assert relative_difference(update(bf16), reference) < BF16_UPDATE_TOLERANCE
    assert all(p.dtype == torch.float32 for p in bf16.model.parameters())


def test_save_load_resumes_exactly(tiny_model_dir, tmp_path):
    first = engine(tiny_model_dir, warmup_steps=3)
    train_step(first)
    first.save(tmp_path / "ckpt")
    train_step(first)

    resumed = engine(tiny_model_dir, warmup_steps=3)
    resumed.load(tmp_path / "ckpt")
    train_step(resumed)
    for (name, a), (_, b) in zip(first.named_weights(), resumed.named_weights()):
        assert torch.equal(a, b), name


def test_saved_model_loads_as_hf_model(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    eng = engine(tiny_model_dir)
    train_step(eng)
    eng.save(tmp_path / "ckpt")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt")
    weights = dict(eng.named_weights())
    assert set(weights) == set(dict(loaded.named_parameters()))
    assert all(torch.equal(p, weights[n]) for n, p in loaded.named_parameters())
    assert AutoTokenizer.from_pretrained(tmp_path / "ckpt").eos_token == "<|im_end|>"


def test_reference_is_frozen_initial_policy(tiny_model_dir):
    ref = make_reference(str(tiny_model_dir), "fp32", device="cpu")
    eng = engine(tiny_model_dir)
    initial, _ = eng.token_logprobs(INPUT_IDS, MASK)
    ref_before = ref(INPUT_IDS, MASK)
    assert not ref_before.requires_grad
    assert torch.allclose(ref_before, initial.detach(), atol=1e-6)
    train_step(eng)
    assert torch.equal(ref(INPUT_IDS, MASK), ref_before)


def test_bad_inputs(tiny_model_dir, tmp_path):
    with pytest.raises(ConfigError, match="model.path"):
        engine(tmp_path / "missing")
    with pytest.raises(ConfigError, match="train.engine"):
        engine(tiny_model_dir, kind="jax")
    with pytest.raises(ConfigError, match="fp16"):
        engine(tiny_model_dir, dtype="fp16")
    with pytest.raises(ConfigError, match="lr_warmup_steps"):
        engine(tiny_model_dir, warmup_steps=11)
    with pytest.raises(CheckpointError, match="no \\*.safetensors"):
        engine(tiny_model_dir).load(tmp_path)


# --- DeepSpeed (gloo, one process, CPU) ----------------------------------------------------


@pytest.fixture(scope="module")
def torch_trajectory(tiny_model_dir):
    eng = engine(tiny_model_dir)
    steps = [train_step(eng) for _ in range(2)]
    return steps, dict(eng.named_weights())


@requires_deepspeed
@pytest.mark.deepspeed
@pytest.mark.parametrize("zero_stage", [0, 2, 3])
def test_deepspeed_matches_torch(tiny_model_dir, torch_trajectory, zero_stage):
    expected_steps, expected_weights = torch_trajectory
    eng = engine(tiny_model_dir, kind="deepspeed", zero_stage=zero_stage)
    for expected_loss, expected_stats in expected_steps:
        loss, stats = train_step(eng)
        assert loss == pytest.approx(expected_loss, abs=1e-5)
        assert stats["grad_norm"] == pytest.approx(expected_stats["grad_norm"], rel=1e-4)
        assert stats["lr"] == pytest.approx(expected_stats["lr"])
    weights = dict(eng.named_weights())
    assert set(weights) == set(expected_weights)
    for name, w in weights.items():
        assert w.shape == expected_weights[name].shape, name
        # ZeRO-3 reduces gradients in another order; where a gradient is ~Adam's eps the
        # rounding difference shows in the update, so compare at 1% of lr (steps move 1e-2).
        assert torch.allclose(w, expected_weights[name], atol=1e-4), name


@requires_deepspeed
@pytest.mark.deepspeed
@pytest.mark.parametrize("zero_stage", [2, 3])
def test_deepspeed_save_load_resumes_exactly(tiny_model_dir, tmp_path, zero_stage):
    from transformers import AutoModelForCausalLM

    first = engine(tiny_model_dir, kind="deepspeed", zero_stage=zero_stage, warmup_steps=3)
    train_step(first)
    first.save(tmp_path / "ckpt")
    saved = {name: w.clone() for name, w in first.named_weights()}
    train_step(first)

    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt")
    assert all(torch.equal(p, saved[n]) for n, p in hf.named_parameters())

    resumed = engine(tiny_model_dir, kind="deepspeed", zero_stage=zero_stage, warmup_steps=3)
    resumed.load(tmp_path / "ckpt")
    train_step(resumed)
    for (name, a), (_, b) in zip(first.named_weights(), resumed.named_weights()):
        assert torch.equal(a, b), name


@requires_deepspeed
@pytest.mark.deepspeed
def test_deepspeed_bf16_step(tiny_model_dir, torch_trajectory):
    (expected_loss, _), _ = torch_trajectory[0]
    eng = engine(tiny_model_dir, kind="deepspeed", zero_stage=2, dtype="bf16")
    assert next(eng.model.parameters()).dtype == torch.bfloat16
    loss, stats = train_step(eng)
    assert loss == pytest.approx(expected_loss, abs=0.05)
    assert stats["grad_norm"] > 0
    lp, _ = eng.token_logprobs(INPUT_IDS, MASK)
    assert lp.dtype == torch.float32 and torch.isfinite(lp).all()
    # the second step's update (bf16 weights, fp32 masters in DeepSpeed's optimizer) against
    # the fp32 torch engine's second step: same data, lr 1e-2, AdamW settings, clipping
    fp32 = engine(tiny_model_dir)
    train_step(fp32)
    assert relative_difference(update(eng), update(fp32)) < BF16_UPDATE_TOLERANCE
