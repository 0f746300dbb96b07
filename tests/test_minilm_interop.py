"""Notebook 06's interop on the real model: our MiniLM adapters and peft's are interchangeable, the shareable
adapter (model card, head) loads with PeftModel.from_pretrained onto AutoModel, the merged export loads with
AutoModel.from_pretrained, our NF4 codes equal bitsandbytes' for every linear layer of MiniLM, and the bad
inputs (another base model, an existing export folder, a 4-bit layer asked to merge) are refused unchanged."""
import json

import pytest
import torch
from conftest import says, unchanged
from safetensors.torch import load_file, save

import helpers.text as T
from helpers.lora import export_merged, load_adapter, lora_layers, merge_lora, save_adapter
from helpers.quant import import_bitsandbytes, quantize_nf4

peft = pytest.importorskip("peft", reason="peft is pinned in requirements.txt; install it with make setup")
transformers = pytest.importorskip("transformers")
QUESTIONS = ["How did serfdom develop in and then leave Russia ?", "Who was Buffalo Bill ?",
             "What is the temperature for cooking ?", "What is a café ?"]
TOL = 1e-5


pytestmark = pytest.mark.usefixtures("offline_one_thread")  # conftest: offline, one thread, per module


@pytest.fixture(scope="module")
def batch():
    _, tok = T.load_minilm()
    return tok(QUESTIONS)


def _perturb(model, seed=0):
    """Give every LoRA B and the head non-zero values, so an adapter that was not loaded shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return model


@pytest.fixture(scope="module")
def ours():
    return _perturb(T.lora_classifier("ours", seed=0))


def _automodel():
    return transformers.AutoModel.from_pretrained(str(T.model_dir())).eval()


@torch.no_grad()
def test_peft_loads_our_classifier_adapter_with_its_head(ours, batch, tmp_path):
    save_adapter(ours, tmp_path / "ad", modules_to_save=["head"])
    assert json.loads((tmp_path / "ad" / "adapter_config.json").read_text())["modules_to_save"] == ["head"]
    theirs = peft.PeftModel.from_pretrained(T.SentenceClassifier(_automodel(), 6, seed=1), str(tmp_path / "ad")).eval()
    assert (theirs(*batch) - ours(*batch)).abs().max().item() <= TOL


@torch.no_grad()
def test_shareable_encoder_adapter_loads_onto_automodel_and_its_card_says_what_it_is(ours, batch, tmp_path):
    head = save({"weight": ours.head.weight.detach().contiguous(), "bias": ours.head.bias.detach().contiguous()})
    card = {"base_model": "sentence-transformers/all-MiniLM-L6-v2", "task": "TREC-6 question classification",
            "metrics": {"test accuracy": 0.93}}
    save_adapter(ours.encoder, tmp_path / "share", card=card, extra_files={"head.safetensors": head})
    theirs = peft.PeftModel.from_pretrained(_automodel(), str(tmp_path / "share")).eval()
    ids, mask = batch
    assert (theirs(input_ids=ids, attention_mask=mask).last_hidden_state
            - ours.encoder(input_ids=ids, attention_mask=mask).last_hidden_state).abs().max().item() <= TOL
    assert load_file(str(tmp_path / "share" / "head.safetensors"))["weight"].equal(ours.head.weight)
    text = (tmp_path / "share" / "README.md").read_text()
    assert "base_model: sentence-transformers/all-MiniLM-L6-v2" in text and "TREC-6" in text
    for pkg in ("torch", "transformers", "peft", "safetensors"):
        from importlib.metadata import version
        assert f"- {pkg} {version(pkg)}" in text
    assert "PeftModel.from_pretrained" in text and "| test accuracy | 0.93 |" in text


@torch.no_grad()
def test_our_load_adapter_reads_peft_classifier_adapter_with_its_head(batch, tmp_path):
    theirs = _perturb(T.lora_classifier("peft", seed=0), seed=1)
    theirs.save_pretrained(str(tmp_path / "peft"))
    mine = load_adapter(T.SentenceClassifier(T.load_minilm()[0], 6, seed=2), tmp_path / "peft").eval()
    assert len(lora_layers(mine)) == 12
    assert (mine(*batch) - theirs(*batch)).abs().max().item() <= TOL


@torch.no_grad()
def test_merged_export_loads_with_automodel_and_refuses_an_existing_folder(ours, batch, tmp_path):
    with unchanged(models=[ours]):
        export_merged(ours.encoder, tmp_path / "merged")
    assert {"config.json", "model.safetensors"} <= {p.name for p in (tmp_path / "merged").iterdir()}
    plain = transformers.AutoModel.from_pretrained(str(tmp_path / "merged")).eval()
    ids, mask = batch
    gap = (plain(input_ids=ids, attention_mask=mask).last_hidden_state
           - ours.encoder(input_ids=ids, attention_mask=mask).last_hidden_state).abs().max().item()
    assert gap <= TOL
    with unchanged(models=[ours], dirs=[tmp_path]), pytest.raises(ValueError, match=says("'merged' already exists",
                                                                                         "pick a new folder")):
        export_merged(ours.encoder, tmp_path / "merged")


def test_nf4_codes_equal_bitsandbytes_for_every_minilm_linear_layer():
    bnb, why_not = import_bitsandbytes()
    if bnb is None:
        pytest.fail(why_not)  # bitsandbytes is pinned: its absence is an installation error, not a skip
    from bitsandbytes.nn import Linear4bit
    q4 = T.lora_classifier("qlora-bnb").base_model.model.encoder
    fp32, _ = T.load_minilm()
    layers = {n: m for n, m in q4.named_modules() if isinstance(m, Linear4bit)}
    assert len(layers) == 37  # 6 layers x (query, key, value, attention output, intermediate, output) + pooler
    for name, m in layers.items():
        base = m.base_layer if hasattr(m, "base_layer") else m
        w = fp32.get_submodule(name.replace(".base_layer", "")).weight
        assert torch.equal(quantize_nf4(w).codes, base.weight.data.view(-1)), name


def test_qlora_ours_refuses_to_merge_or_export_and_writes_nothing(tmp_path):
    model = T.lora_classifier("qlora-ours")
    with unchanged(models=[model], dirs=[tmp_path]):
        with pytest.raises(ValueError, match=says("cannot merge into a 4-bit NF4 base", "nothing was merged")):
            merge_lora(model)
        with pytest.raises(ValueError, match=says("cannot merge into a 4-bit NF4 base")):
            export_merged(model.encoder, tmp_path / "merged")


def test_adapter_for_another_base_model_is_refused_unchanged(ours, tmp_path):
    from helpers.models import mlp
    save_adapter(ours, tmp_path / "ad", modules_to_save=["head"])
    other = mlp()
    with unchanged(models=[other], dirs=[tmp_path]), pytest.raises(ValueError, match=says("matches no module")):
        load_adapter(other, tmp_path / "ad")
    small = T.SentenceClassifier(transformers.BertModel(transformers.BertConfig(
        hidden_size=64, num_hidden_layers=6, num_attention_heads=2, intermediate_size=128, vocab_size=100)), 6)
    with unchanged(models=[small], dirs=[tmp_path]), pytest.raises(ValueError, match=says(
            "has shape (8, 384)", "needs (8, 64)", "load it into the base model it was trained on")):
        load_adapter(small, tmp_path / "ad")
    wrong_head = T.SentenceClassifier(T.load_minilm()[0], 4)
    with unchanged(models=[wrong_head], dirs=[tmp_path]), pytest.raises(ValueError, match=says(
            "modules_to_save 'head'", "same head size")):
        load_adapter(wrong_head, tmp_path / "ad")


@pytest.mark.parametrize("kwargs, fragments", [
    ({"card": {"task": "x"}}, ("card['base_model'] must be a non-empty str",)),
    ({"card": {"base_model": "m", "task": "t", "metrics": {"acc": "high"}}}, ("card['metrics']", "finite numbers")),
    ({"card": {"base_model": "m", "task": "t", "licence": "x"}}, ("unknown card key",)),
    ({"extra_files": {"adapter_config.json": b"{}"}}, ("would overwrite the adapter's own file",)),
    ({"extra_files": {"../head.safetensors": b""}}, ("plain file name",)),
    ({"modules_to_save": ["classifier"]}, ("'classifier' is not a (non-LoRA) module", "head")),
])
def test_save_adapter_bad_card_extra_files_or_modules_write_nothing(ours, tmp_path, kwargs, fragments):
    with unchanged(models=[ours], dirs=[tmp_path]), pytest.raises(ValueError, match=says(*fragments)):
        save_adapter(ours, tmp_path / "ad", **kwargs)
    assert not (tmp_path / "ad").exists()


def test_lora_classifier_kinds_agree_on_counts_and_start_equal(batch):
    kinds = {k: T.lora_classifier(k, seed=3) for k in ("ours", "peft")}
    counts = {k: sum(p.numel() for p in m.parameters() if p.requires_grad) for k, m in kinds.items()}
    assert counts == {"ours": 76_038, "peft": 76_038}
    with torch.no_grad():
        assert torch.equal(kinds["ours"](*batch), kinds["peft"](*batch))  # B = 0, same head: the base model's logits
    with pytest.raises(ValueError, match=says("unknown kind 'qlora'", "ours, peft, qlora-ours, qlora-bnb")):
        T.lora_classifier("qlora")


def test_lora_classifier_ours_is_notebook_05s_lora_model():
    """sweeps/minilm_practice.py takes notebook 05's stored LoRA r=8 runs as "ours": the models must be identical."""
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from sweeps.minilm import build
    state = torch.random.get_rng_state()
    try:
        nb05, *_ = build(dict(method="lora", size=8, seed=1), T.load_minilm()[0])
    finally:
        torch.random.set_rng_state(state)
    mine = T.lora_classifier("ours", seed=1)
    a, b = nb05.state_dict(), mine.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    trainable = [[n for n, p in m.named_parameters() if p.requires_grad] for m in (nb05, mine)]
    assert trainable[0] == trainable[1]
