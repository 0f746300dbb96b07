import pytest
import torch

from helpers.memory import DTYPE_BYTES, finetune_memory, lora_params, measure_training_memory, training_memory
from helpers.models import mlp


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    return torch.rand(16, 784, generator=g), torch.randint(0, 10, (16,), generator=g)


def test_full_fp32_adam_is_16_bytes_per_param_and_mixed_too():
    assert training_memory(1000)["total"] == 16_000
    mixed = training_memory(1000, precision="mixed")
    assert (mixed["weights"], mixed["gradients"], mixed["optimizer"]) == (2000, 2000, 12000)


def test_frozen_params_cost_only_their_weights():
    m = training_memory(1000, n_trainable=10, precision="fp32", frozen_dtype="nf4")
    assert m["weights"] == 10 * 4 + 990 * 0.5 and m["gradients"] == 40 and m["optimizer"] == 80


@pytest.mark.parametrize("optimizer", ["adam", "sgd", "sgd_momentum"])
def test_formula_equals_measured_for_full_training(batch, optimizer):
    model = mlp()
    n = sum(p.numel() for p in model.parameters())
    measured = measure_training_memory(model, *batch, optimizer=optimizer)
    formula = training_memory(n, optimizer=optimizer)
    assert {k: measured[k] for k in formula} == formula


def test_formula_equals_measured_for_partial_training(batch):
    model = mlp()
    for name, p in model.named_parameters():  # LoRA-like: most of the model frozen
        p.requires_grad = name.startswith("head") or name.endswith("bias")
    n = sum(p.numel() for p in model.parameters())
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    measured = measure_training_memory(model, *batch)
    assert n_trainable == 200 * 10 + 10 + 200 + 200
    assert {k: measured[k] for k in ("weights", "gradients", "optimizer", "total")} == training_memory(n, n_trainable)


def test_measuring_leaves_the_model_unchanged(batch):
    model = mlp()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    measure_training_memory(model, *batch)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


def test_lora_paper_gpt3_numbers_from_first_principles():
    n = lora_params(d_model=12288, n_layers=96, r=4)  # W_q and W_v in 96 layers
    assert n == 18_874_368
    assert round(n * 2 / 1e6) == 38  # fp16 adapter: ~35 MB (MiB: 36) against a 350 GB checkpoint
    lora = finetune_memory("GPT-3 175B", "lora", r=4)
    assert round(lora["total"] / 1e9) == 350
    assert finetune_memory("GPT-3 175B", "full")["total"] == 16 * 175e9


def test_qlora_base_is_about_4_bits_per_param():
    assert DTYPE_BYTES["nf4-dq"] * 8 == pytest.approx(4.127, abs=1e-3)
    q = finetune_memory("LLaMA-2 7B", "qlora", r=8)
    assert q["total"] < finetune_memory("LLaMA-2 7B", "lora", r=8)["total"] / 3


