"""Datasets (embedded and folder loaders on stand-ins in the real formats) and model facts."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from trajlib.paper import data
from trajlib.paper.runs import build_model, load_data
from trajlib.paper.models import count_parameters, resnet20, tiny_gpt_neox, vgg16


def test_resnet20_has_the_paper_parameter_counts():
    m = resnet20()
    assert count_parameters(m) == 269_722
    assert count_parameters(m, bn_only=True) == 1_376
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_analogues_run_on_digits_shapes():
    for name, kw in [("small_cnn", {"width": 8}), ("cifar_resnet", {"width": 8, "blocks": 1}),
                     ("vgg", {"bn": False}), ("mlp", {"width": 16})]:
        m = build_model(name, seed=0, dataset="digits", **kw)
        assert m(torch.randn(3, 1, 8, 8)).shape == (3, 10)
    a = build_model("small_cnn", seed=3, dataset="digits")
    b = build_model("small_cnn", seed=3, dataset="digits")
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert vgg16()(torch.randn(1, 3, 32, 32)).shape == (1, 10)
    with pytest.raises(ValueError, match="unknown model 'resnet9000'.*valid: small_cnn"):
        build_model("resnet9000", seed=0, dataset="digits")


def test_digits_split_is_fixed_per_seed_and_standardised():
    d = data.digits(seed=0)
    assert d.x_train.shape[1:] == (1, 8, 8) and len(d.y_train) + len(d.y_test) == 1797
    assert abs(float(d.x_train.mean())) < 1e-5 and abs(float(d.x_train.std()) - 1) < 1e-3
    assert torch.equal(data.digits(seed=0).y_test, d.y_test)
    assert not torch.equal(data.digits(seed=1).y_test, d.y_test)


def test_char_corpus_from_pydoc_roundtrips():
    corpus = data.char_corpus()
    assert corpus.vocab_size > 50 and len(corpus.train) > 100_000
    text = "".join(corpus.vocab[i] for i in corpus.valid[:200].tolist())
    assert text in data.pydoc_text()


def test_gpt_neox_uses_pythia_parameter_names():
    m = tiny_gpt_neox(vocab_size=30, width=16, layers=2, heads=4, context=8)
    names = dict(m.named_parameters())
    assert names["gpt_neox.layers.1.attention.query_key_value.weight"].shape == (48, 16)
    assert {"embed_out.weight", "lm_head.weight"} & set(names)  # transformers ≥ 5 says lm_head
    with pytest.raises(ValueError, match="not divisible"):
        tiny_gpt_neox(vocab_size=30, width=10, heads=4)


def _cifar_standin(root):
    folder = root / "cifar10" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), b"labels": list(range(4)),
                 b"batch_label": name.encode(), b"filenames": [b"x.png"] * 4}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [f"c{i}".encode() for i in range(10)]}, f)


def test_cifar10_reads_torchvision_format_from_trajlib_data(tmp_path, monkeypatch):
    _cifar_standin(tmp_path)
    monkeypatch.setenv("TRAJLIB_DATA", str(tmp_path))
    train, test = load_data("cifar10")
    x, y = train[0]
    assert x.shape == (3, 32, 32) and len(train) == 20 and len(test) == 4


def test_cifar10_refuses_pickled_code(tmp_path):
    import os

    class Exploit:
        def __reduce__(self):
            return (os.system, ("true",))

    _cifar_standin(tmp_path)
    with open(tmp_path / "cifar10" / "cifar-10-batches-py" / "test_batch", "wb") as f:
        pickle.dump({b"data": Exploit()}, f)
    with pytest.raises(ValueError, match="test_batch is not a CIFAR-10 batch file.*refusing to load posix.system"):
        data.cifar10(tmp_path / "cifar10", train=False)


def test_imagenet_reads_an_image_folder(tmp_path):
    for split in ("train", "val"):
        for wnid in ("n01440764", "n01443537"):
            d = tmp_path / "imagenet" / split / wnid
            d.mkdir(parents=True)
            for i in range(2):
                Image.fromarray(np.full((40, 50, 3), 60 * i, np.uint8)).save(d / f"{i}.JPEG")
    train = data.imagenet(tmp_path / "imagenet", split="train", size=32)
    x, y = train[0]
    assert x.shape == (3, 32, 32) and len(train.classes) == 2


def test_missing_data_folders_name_the_expected_layout(tmp_path, monkeypatch):
    monkeypatch.delenv("TRAJLIB_DATA", raising=False)
    with pytest.raises(FileNotFoundError, match="(?s)TRAJLIB_DATA is unset.*cifar-10-batches-py"):
        data.cifar10()
    monkeypatch.setenv("TRAJLIB_DATA", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"(?s)imagenet.*does not exist.*<root>/train/<wnid>"):
        data.imagenet()
    (tmp_path / "cifar10").mkdir()
    with pytest.raises(FileNotFoundError, match="lacks cifar-10-batches-py"):
        data.cifar10()
    with pytest.raises(ValueError, match="unknown dataset 'mnist'"):
        load_data("mnist")


def test_tiny_vit_tokens_shapes_and_seeded_init():
    from trajlib.paper.models import TinyViT

    m = build_model("tiny_vit", seed=1, dataset="digits")
    assert isinstance(m, TinyViT) and m(torch.randn(3, 1, 8, 8)).shape == (3, 10)
    assert m.pos.shape == (1, 4 + 1, 32)  # four 4×4 patches and the class token
    assert m.embed(torch.randn(2, 1, 8, 8)).flatten(2).shape == (2, 32, 4)
    assert TinyViT(patch=2, dim=16, heads=2)(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    assert build_model("tiny_vit", seed=0, dataset="cifar10")(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    again = build_model("tiny_vit", seed=1, dataset="digits")
    assert all(torch.equal(p, q) for p, q in zip(m.parameters(), again.parameters()))
    with pytest.raises(ValueError, match="divisible by patch=3"):
        TinyViT(patch=3)
    # the class token sees the patches: changing one pixel changes the output
    x = torch.randn(1, 1, 8, 8)
    y = x.clone()
    y[0, 0, 7, 7] += 1.0
    m.eval()
    assert not torch.allclose(m(x), m(y))


def test_a_dead_initialisation_passes_no_gradient_to_the_weights():
    m = build_model("small_cnn", seed=0, dataset="digits", width=4, bn_init=0.0)
    assert all(float(bn.weight.abs().max()) == 0 for bn in m.modules() if isinstance(bn, torch.nn.BatchNorm2d))
    loss = torch.nn.functional.cross_entropy(m(torch.randn(8, 1, 8, 8)), torch.arange(8))
    loss.backward()
    grads = {n: float(p.grad.abs().max()) for n, p in m.named_parameters()}
    assert grads["head.bias"] > 0
    assert all(g == 0 for n, g in grads.items() if n != "head.bias"), grads
    healthy = build_model("small_cnn", seed=0, dataset="digits", width=4)
    torch.nn.functional.cross_entropy(healthy(torch.randn(8, 1, 8, 8)), torch.arange(8)).backward()
    assert float(healthy.features[0].weight.grad.abs().max()) > 0
    with pytest.raises(ValueError, match="TinyViT has no BatchNorm"):
        build_model("tiny_vit", seed=0, dataset="digits", bn_init=0.0)


def test_vit_b_16_is_the_named_paper_model():
    from trajlib.paper.runs import MODELS
    from trajlib.paper.models import vit_b_16

    assert MODELS["vit_b_16"] is vit_b_16  # constructed only by the paper preset (86M parameters)
