"""LoRA on all linear layers (QLoRA's recipe) and the activation estimate behind notebook 01's calculator."""
import pytest

from helpers.memory import FFN_WIDTH, MODELS, activation_memory, lora_params, lora_params_all_linear


def test_all_linear_lora_of_llama2_7b_at_r64():
    spec = MODELS["LLaMA-2 7B"]
    n = lora_params_all_linear(spec["d_model"], spec["n_layers"], FFN_WIDTH["LLaMA-2 7B"], 64)
    assert n == 159_907_840  # what peft prints for LLaMA-2 7B, r = 64 on all seven projections
    # W_q, W_v alone at the same rank are 2 of its 7 matrices' worth of attention parameters
    assert lora_params(spec["d_model"], spec["n_layers"], 64) == 32 * 2 * 64 * 2 * 4096 < n


def test_activation_memory_formula_and_checkpointing():
    full = activation_memory(4096, 32, 32, 512)
    per_layer = 512 * 4096 * (34 + 5 * 32 * 512 / 4096)
    assert full == 32 * per_layer
    ckpt = activation_memory(4096, 32, 32, 512, checkpointing=True)
    assert ckpt == 32 * 2 * 512 * 4096 + per_layer and ckpt < full / 10
    assert activation_memory(4096, 32, 32, 512, batch=4) == 4 * full


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "512"])
def test_activation_memory_refuses_bad_sizes(bad):
    with pytest.raises(ValueError, match="whole number"):
        activation_memory(4096, 32, 32, bad)
    with pytest.raises(ValueError, match=">= 1"):
        lora_params_all_linear(4096, 32, 11008, 0)
