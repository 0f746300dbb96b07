"""helpers.lora: the layer, model surgery, merging, counts, adapter files, and cross-checks against peft."""
import copy
import json
import math
import warnings

import pytest
import torch
from torch import nn

from helpers.lora import LoRALinear, add_lora, load_adapter, merge_and_unload, merge_lora, save_adapter, unmerge_lora
from helpers.models import count_parameters, mlp, print_trainable_parameters

SIZES = (6, 32, 24, 16, 3)  # fc1 6->32, fc2 32->24, fc3 24->16, head 16->3


def trained_lora(seed=0, r=4, alpha=8, rslora=False, targets=("fc2", "fc3")):
    """An adapted model whose B is non-zero (as after training), so the adapter changes the output."""
    model = add_lora(mlp(SIZES, seed=seed), list(targets), r=r, alpha=alpha, rslora=rslora)
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, LoRALinear):
                m.lora_B.weight.copy_(torch.randn(m.lora_B.weight.shape, generator=g) * 0.1)
    return model


@pytest.fixture
def x():
    return torch.randn(64, SIZES[0], generator=torch.Generator().manual_seed(1))


# ---- the layer ---------------------------------------------------------------------------------------------

def test_identity_at_init_and_shapes():
    base = nn.Linear(20, 12)
    layer = LoRALinear(copy.deepcopy(base), r=3, alpha=6)
    assert layer.lora_A.weight.shape == (3, 20) and layer.lora_B.weight.shape == (12, 3)
    assert torch.count_nonzero(layer.lora_B.weight) == 0 and torch.count_nonzero(layer.lora_A.weight) > 0
    xs = torch.randn(8, 20)
    assert torch.equal(layer(xs), base(xs))
    assert torch.count_nonzero(layer.delta_weight()) == 0 and layer.delta_weight().shape == (12, 20)


def test_lora_A_init_is_kaiming_uniform_a_sqrt5():
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(400, 50), r=8, alpha=8)
    bound = 1 / math.sqrt(400)  # Kaiming-uniform with a=√5: U(-1/√fan_in, 1/√fan_in)
    A = layer.lora_A.weight
    assert A.abs().max() <= bound and A.abs().max() > 0.95 * bound
    assert abs(A.std().item() - bound / math.sqrt(3)) < 0.05 * bound


def test_forward_is_base_plus_scaled_BA():
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(10, 7), r=2, alpha=5)
    nn.init.normal_(layer.lora_B.weight)
    xs = torch.randn(4, 10)
    W0, b, A, B = layer.base.weight, layer.base.bias, layer.lora_A.weight, layer.lora_B.weight
    assert layer.scaling == 2.5
    torch.testing.assert_close(layer(xs), xs @ W0.T + b + 2.5 * xs @ A.T @ B.T)
    torch.testing.assert_close(layer.delta_weight(), 2.5 * B @ A)


def test_rslora_scaling():
    assert LoRALinear(nn.Linear(32, 32), r=16, alpha=8).scaling == 8 / 16
    assert LoRALinear(nn.Linear(32, 32), r=16, alpha=8, rslora=True).scaling == 8 / 4


def test_base_is_frozen_and_only_A_B_train():
    layer = LoRALinear(nn.Linear(10, 7), r=2, alpha=2)
    trainable = {n for n, p in layer.named_parameters() if p.requires_grad}
    assert trainable == {"lora_A.weight", "lora_B.weight"}


def test_dropout_only_on_branch_and_only_in_train_mode():
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(50, 40), r=4, alpha=4, dropout=0.5)
    nn.init.normal_(layer.lora_B.weight)
    xs = torch.randn(16, 50)
    base_out = layer.base(xs)
    layer.train()
    a, b = layer(xs), layer(xs)
    assert not torch.allclose(a, b)  # dropout draws differ
    # the base path sees the full input: subtracting it leaves exactly a branch computed on dropped-out input
    torch.manual_seed(5)
    branch = layer(xs) - base_out
    torch.manual_seed(5)
    mask_input = nn.functional.dropout(xs, 0.5, training=True)
    torch.testing.assert_close(branch, layer.scaling * mask_input @ layer.lora_A.weight.T @ layer.lora_B.weight.T)
    layer.eval()
    torch.testing.assert_close(layer(xs), base_out + layer.lora_forward(xs))
    assert torch.equal(layer(xs), layer(xs))
    no_dropout = LoRALinear(nn.Linear(50, 40), r=4, alpha=4)
    assert isinstance(no_dropout.lora_dropout, nn.Identity)


def test_merge_unmerge_round_trip_and_idempotence():
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(30, 20), r=4, alpha=8)
    nn.init.normal_(layer.lora_B.weight)
    W0 = layer.base.weight.detach().clone()
    xs = torch.randn(8, 30)
    unmerged = layer(xs)
    layer.merge()
    layer.merge()  # idempotent
    assert layer.merged
    torch.testing.assert_close(layer.base.weight, W0 + layer.delta_weight())
    torch.testing.assert_close(layer(xs), unmerged, atol=1e-5, rtol=0)
    layer.unmerge()
    layer.unmerge()
    assert not layer.merged
    torch.testing.assert_close(layer.base.weight, W0, atol=1e-6, rtol=0)
    torch.testing.assert_close(layer(xs), unmerged, atol=1e-6, rtol=0)


# ---- model surgery -------------------------------------------------------------------------------------------

def test_add_lora_replaces_targets_and_freezes_the_rest(x):
    base = mlp(SIZES, seed=0)
    model = add_lora(copy.deepcopy(base), ["fc2", "fc3"], r=4, alpha=8)
    assert isinstance(model.fc2, LoRALinear) and isinstance(model.fc3, LoRALinear)
    assert isinstance(model.fc1, nn.Linear) and isinstance(model.head, nn.Linear)
    trainable = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    assert trainable == ["fc2.lora_A.weight", "fc2.lora_B.weight", "fc3.lora_A.weight", "fc3.lora_B.weight"]
    assert torch.equal(model(x), base(x))  # identity at step 0


def test_trainable_count_is_r_times_in_plus_out():
    base_total = sum(p.numel() for p in mlp(SIZES).parameters())
    for r in (1, 2, 4):
        model = add_lora(mlp(SIZES), ["fc2", "fc3"], r=r, alpha=r)
        trainable, total = count_parameters(model)
        assert trainable == r * (32 + 24) + r * (24 + 16)
        assert total == base_total + trainable


def test_print_trainable_parameters_format(capsys):
    model = add_lora(mlp(SIZES), ["fc2"], r=2, alpha=2)
    print_trainable_parameters(model)
    total = sum(p.numel() for p in model.parameters())
    assert capsys.readouterr().out == (f"trainable params: 112 || all params: {total:,d} || "
                                       f"trainable%: {100 * 112 / total:.4f}\n")


def test_suffix_matching_like_peft():
    model = nn.Sequential()
    model.add_module("encoder", mlp((4, 8, 8, 2)))
    model.add_module("fc1", nn.Linear(2, 2))
    model.add_module("xfc2", nn.Linear(2, 2))
    add_lora(model, ["fc2"], r=1, alpha=1)
    assert isinstance(model.encoder.fc2, LoRALinear)
    assert isinstance(model.xfc2, nn.Linear) and not isinstance(model.xfc2, LoRALinear)
    add_lora(model, ["fc1"], r=1, alpha=1)  # matches "fc1" exactly and "encoder.fc1" as a suffix
    assert isinstance(model.fc1, LoRALinear) and isinstance(model.encoder.fc1, LoRALinear)
    regex = add_lora(mlp(SIZES), r"fc[23]", r=1, alpha=1)
    assert {n for n, m in regex.named_modules() if isinstance(m, LoRALinear)} == {"fc2", "fc3"}


def test_merge_lora_and_merge_and_unload(x):
    model = trained_lora()
    unmerged = model(x)
    merge_lora(model)
    assert all(m.merged for m in model.modules() if isinstance(m, LoRALinear))
    torch.testing.assert_close(model(x), unmerged, atol=1e-5, rtol=0)
    unmerge_lora(model)
    torch.testing.assert_close(model(x), unmerged, atol=1e-6, rtol=0)
    plain = merge_and_unload(model)
    assert not any(isinstance(m, LoRALinear) for m in plain.modules())
    assert type(plain.fc2) is nn.Linear
    assert [n for n, _ in plain.named_parameters()] == [n for n, _ in mlp(SIZES).named_parameters()]
    torch.testing.assert_close(plain(x), unmerged, atol=1e-5, rtol=0)


# ---- adapter files -------------------------------------------------------------------------------------------

def test_save_writes_peft_layout(tmp_path):
    from safetensors.torch import load_file

    model = trained_lora(r=4, alpha=8)
    save_adapter(model, tmp_path / "ad")
    assert sorted(p.name for p in (tmp_path / "ad").iterdir()) == ["README.md", "adapter_config.json",
                                                                    "adapter_model.safetensors"]
    config = json.loads((tmp_path / "ad" / "adapter_config.json").read_text())
    assert config == {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["fc2", "fc3"],
                      "lora_dropout": 0.0, "use_rslora": False, "bias": "none"}
    tensors = load_file(tmp_path / "ad" / "adapter_model.safetensors")
    assert {k: tuple(v.shape) for k, v in tensors.items()} == {
        "base_model.model.fc2.lora_A.weight": (4, 32), "base_model.model.fc2.lora_B.weight": (24, 4),
        "base_model.model.fc3.lora_A.weight": (4, 24), "base_model.model.fc3.lora_B.weight": (16, 4)}
    assert torch.equal(tensors["base_model.model.fc2.lora_B.weight"], model.fc2.lora_B.weight)
    assert "library_name: peft" in (tmp_path / "ad" / "README.md").read_text()


def test_save_load_round_trip(tmp_path, x):
    model = trained_lora(rslora=True)
    model.fc2.lora_dropout = nn.Dropout(0.1)  # the setting is saved and restored
    model.fc3.lora_dropout = nn.Dropout(0.1)
    model.eval()
    save_adapter(model, tmp_path)
    fresh = load_adapter(mlp(SIZES, seed=0), tmp_path)
    fresh.eval()
    assert torch.equal(fresh(x), model(x))
    assert fresh.fc2.rslora and fresh.fc2.scaling == model.fc2.scaling and fresh.fc2.lora_dropout.p == 0.1
    assert count_parameters(fresh) == count_parameters(model)


# ---- cross-checks against peft -------------------------------------------------------------------------------

@pytest.fixture
def peft():
    peft = pytest.importorskip("peft")
    warnings.filterwarnings("ignore", module="peft")
    return peft


@pytest.mark.parametrize("rslora", [False, True])
def test_peft_loads_our_adapter_with_identical_outputs(tmp_path, x, peft, rslora):
    model = trained_lora(r=4, alpha=8, rslora=rslora).eval()
    save_adapter(model, tmp_path)
    theirs = peft.PeftModel.from_pretrained(mlp(SIZES, seed=0), str(tmp_path)).eval()
    with torch.no_grad():
        torch.testing.assert_close(theirs(x), model(x), atol=1e-6, rtol=0)
        assert not torch.allclose(theirs(x), mlp(SIZES, seed=0)(x), atol=1e-3)  # the adapter does something


def test_we_load_peft_saved_adapter_with_identical_outputs(tmp_path, x, peft):
    config = peft.LoraConfig(target_modules=["fc2", "fc3"], r=4, lora_alpha=8, lora_dropout=0.05)
    theirs = peft.get_peft_model(mlp(SIZES, seed=0), config)
    torch.manual_seed(3)
    with torch.no_grad():
        for name, p in theirs.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    theirs.save_pretrained(str(tmp_path))
    ours = load_adapter(mlp(SIZES, seed=0), tmp_path).eval()
    theirs.eval()
    assert ours.fc2.lora_dropout.p == 0.05
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), atol=1e-6, rtol=0)


def test_trainable_count_equals_peft(peft):
    for r, targets in [(1, ["fc2"]), (4, ["fc2", "fc3"]), (2, ["fc1", "fc2", "fc3", "head"])]:
        ours = add_lora(mlp(SIZES), targets, r=r, alpha=2 * r)
        theirs = peft.get_peft_model(mlp(SIZES), peft.LoraConfig(target_modules=targets, r=r, lora_alpha=2 * r))
        assert count_parameters(ours) == tuple(theirs.get_nb_trainable_parameters())
