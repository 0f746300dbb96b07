"""helpers.data.transfer_pair: notebook 01's two source -> target pairs."""
import pytest
import torch

from helpers.data import load_mnist, transfer_pair


def test_parity_pair_uses_images_the_source_never_saw():
    d = transfer_pair("digits->parity")
    assert len(d["source"][0]) == 3000 and len(d["fit"][0]) == 100 and len(d["val"][0]) == 400
    assert (d["n_source"], d["n_target"]) == (10, 2) and set(d["fit"][1].tolist()) == {0, 1}
    source_rows = {x.numpy().tobytes() for x in d["source"][0]}
    assert not any(x.numpy().tobytes() in source_rows for x in torch.cat([d["fit"][0], d["val"][0]]))
    X, y, Xt, yt = load_mnist("5k")
    assert torch.equal(d["test"][1], yt % 2) and torch.equal(d["source_test"][1], yt)


def test_unrelated_pair_and_determinism():
    d = transfer_pair("0-4->5-9")
    assert (len(d["fit"][0]), len(d["val"][0]), len(d["test"][0])) == (1600, 400, 500)
    assert int(d["source"][1].max()) == 4 and int(d["fit"][1].max()) == 4
    again = transfer_pair("0-4->5-9")
    assert torch.equal(again["fit"][0], d["fit"][0]) and torch.equal(again["val"][1], d["val"][1])


def test_unknown_pair_is_refused():
    with pytest.raises(ValueError, match="unknown pair"):
        transfer_pair("parity")
