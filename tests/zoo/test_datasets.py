"""The zoo's real data sets: sizes, labels, and the deterministic splits."""

import numpy as np
import pytest
import torch

from bitfold import zoo
from bitfold.zoo import datasets


def test_unknown_dataset_lists_known_names():
    with pytest.raises(ValueError) as err:
        zoo.load_dataset("imagenet")
    for name in ("rotten-tomatoes", "hamlet", "news", "fashion-mnist", "mnist-5k"):
        assert name in str(err.value)


def test_rotten_tomatoes():
    ds = zoo.load_dataset("rotten-tomatoes")
    assert len(ds) == 4866
    assert ds.label_names == ("rotten", "fresh")
    assert np.bincount(ds.labels).tolist() == [2411, 2455]
    assert all(isinstance(t, str) and t for t in ds.items)
    text, label = ds[0]
    assert isinstance(text, str) and label in (0, 1)
    assert len(ds.fields["movie_name"]) == len(ds)


def test_hamlet():
    ds = zoo.load_dataset("hamlet")
    assert "To be, or not to be: that is the question" in ds.raw_text
    assert ds.labels is None
    assert 1000 < len(ds) < 1300
    assert ds.items[0] == "Who's there?" and ds.fields["speaker"][0] == "BERNARDO"
    assert ds.fields["speaker"].count("HAMLET") > 300
    assert any(t.startswith("To be, or not to be") for t in ds.items)
    assert "Ghost" in ds.fields["speaker"]
    assert not any(line.startswith(("Enter ", "Exit", "Exeunt")) for t in ds.items for line in t.splitlines())


def test_news():
    ds = zoo.load_dataset("news")
    assert len(ds) == 3824
    assert ds.labels is None
    assert ds.fields["title"][0].startswith("Betsy DeVos Confirmed")
    assert sum(len(t) > 200 for t in ds.items) > 3000
    assert set(ds.fields) >= {"title", "publish_date", "source_link"}


def test_mnist_5k():
    ds = zoo.load_dataset("mnist-5k")
    assert ds.items.shape == (5000, 28, 28) and ds.items.dtype == np.uint8
    assert np.bincount(ds.labels).tolist() == [500] * 10
    assert ds.items.max() == 255 and ds.items.min() == 0


def test_fashion_mnist(fashion_test):
    assert fashion_test.items.shape == (10000, 28, 28) and fashion_test.items.dtype == np.uint8
    assert np.bincount(fashion_test.labels).tolist() == [1000] * 10
    assert fashion_test.label_names[9] == "Ankle boot"
    train = zoo.load_dataset("fashion-mnist", split="train")
    assert train.items.shape == (60000, 28, 28)
    assert np.bincount(train.labels).tolist() == [6000] * 10
    with pytest.raises(ValueError, match="train"):
        zoo.load_dataset("fashion-mnist", split="validation")


def test_fashion_mnist_missing_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setattr(datasets, "FASHION_MNIST_DIR", tmp_path)
    with pytest.raises(zoo.ZooMissingError, match="apt-get install dataset-fashion-mnist"):
        zoo.load_dataset("fashion-mnist")


def test_no_splits_for_single_file_sets():
    with pytest.raises(ValueError, match="no predefined splits"):
        zoo.load_dataset("news", split="train")


def test_split_is_disjoint_and_deterministic():
    ds = zoo.load_dataset("rotten-tomatoes")
    calib, evals = zoo.split(ds, n_calib=64, seed=0, n_eval=500)
    assert len(calib) == 64 and len(evals) == 500
    assert not set(calib.items) & set(evals.items)
    calib2, evals2 = zoo.split(ds, n_calib=64, seed=0, n_eval=500)
    assert calib.items == calib2.items and evals.items == evals2.items
    assert calib.labels.tolist() == calib2.labels.tolist()
    calib3, _ = zoo.split(ds, n_calib=64, seed=1)
    assert calib3.items != calib.items
    _, rest = zoo.split(ds, n_calib=64)
    assert len(rest) == len(ds) - 64


def test_split_plain_containers():
    arr = np.arange(100)
    a, b = zoo.split(arr, 10, seed=3)
    assert len(a) == 10 and len(b) == 90 and not set(a) & set(b) and set(a) | set(b) == set(range(100))
    ta, tb = zoo.split(torch.arange(100), 10, seed=3)
    assert ta.tolist() == a.tolist() and tb.tolist() == b.tolist()
    la, lb = zoo.split(list(range(100)), 10, seed=3)
    assert la == a.tolist() and lb == b.tolist()
    with pytest.raises(ValueError):
        zoo.split(arr, 60, n_eval=50)


def test_subset_keeps_fields():
    ds = zoo.load_dataset("news")
    sub = ds.subset([5, 1])
    assert sub.items == [ds.items[5], ds.items[1]]
    assert sub.fields["title"] == [ds.fields["title"][5], ds.fields["title"][1]]


@pytest.mark.parametrize("source", ["mnist-5k", "fashion-mnist"])
def test_vision_images(source, request):
    if source == "fashion-mnist":
        request.getfixturevalue("fashion_test")
    x = zoo.vision_images(6, source=source, seed=0)
    assert x.shape == (6, 3, 224, 224) and x.dtype == np.uint8
    assert np.array_equal(x[:, 0], x[:, 1])
    assert np.array_equal(x, zoo.vision_images(6, source=source, seed=0))
    inv = zoo.vision_images(6, source=source, seed=0, invert=True)
    assert np.array_equal(inv, 255 - x)
