import json

import numpy as np
import pandas as pd
import pytest
import torch

from training.data.images import SyntheticImages
from training.models.features import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    extract_features,
    load_backbone,
    main,
)


class Counting:
    """An image source that records which batches were asked for and can fail on one."""

    def __init__(self, images: SyntheticImages, fail_at: int | None = None):
        self.images, self.fail_at = images, fail_at
        self.asked: list[int] = []

    def __len__(self) -> int:
        return len(self.images)

    def batch(self, start: int, stop: int) -> np.ndarray:
        if start == self.fail_at:
            raise KeyboardInterrupt  # what a user pressing Ctrl-C raises mid-run
        self.asked.append(start)
        return self.images.batch(start, stop)


@pytest.fixture(scope="module")
def backbone():
    return load_backbone("resnet18", seed=0)


@pytest.fixture(scope="module")
def images():
    return SyntheticImages(np.arange(22) % 5, np.linspace(0, 1, 22), 5, size=16, seed=3)


def _by_hand(backbone, pics: np.ndarray) -> np.ndarray:
    x = pics.astype(np.float32) / 255.0
    x = (x - np.array(IMAGENET_MEAN, np.float32)[:, None, None]) / np.array(
        IMAGENET_STD, np.float32
    )[:, None, None]
    with torch.no_grad():
        return backbone(torch.from_numpy(x)).numpy()


def test_backbone_gives_pooled_features_without_the_classifier(backbone):
    out = backbone(torch.rand(2, 3, 32, 32))
    assert out.shape == (2, 512)  # resnet18's pooled width, not 1000 ImageNet classes
    again = load_backbone("resnet18", seed=0)(torch.ones(1, 3, 32, 32))
    assert torch.allclose(backbone(torch.ones(1, 3, 32, 32)), again)


def test_weights_come_from_a_local_state_dict(tmp_path, backbone):
    import torchvision

    torch.manual_seed(7)
    source = torchvision.models.resnet18(weights=None).eval()
    torch.save(source.state_dict(), tmp_path / "r18.pth")
    loaded = load_backbone("resnet18", weights=tmp_path / "r18.pth", seed=0)
    x = torch.rand(2, 3, 32, 32)
    source.fc = torch.nn.Identity()
    with torch.no_grad():
        assert torch.allclose(loaded(x), source(x), atol=1e-5)
        assert not torch.allclose(loaded(x), backbone(x))


def test_missing_or_wrong_weights_files_are_explained(tmp_path):
    with pytest.raises(FileNotFoundError, match="pass no weights to use a random network"):
        load_backbone("resnet18", weights=tmp_path / "nope.pth")
    torch.save({"fc.weight": torch.zeros(3, 3)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="does not hold resnet18 weights"):
        load_backbone("resnet18", weights=tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="not a torchvision ResNet"):
        load_backbone("vgg11")


def test_extracted_features_are_the_network_on_normalised_pictures(tmp_path, backbone, images):
    feats = extract_features(images, tmp_path / "f.npy", backbone, batch_size=8, progress=False)
    assert feats.dtype == np.float32 and feats.shape == (22, 512)
    expected = _by_hand(backbone, images.batch(0, 22))
    assert np.allclose(feats, expected, atol=1e-4)
    assert (tmp_path / "f.npy").exists() and not (tmp_path / "f.partial.npy").exists()


def test_cached_features_are_read_back_without_computing(tmp_path, backbone, images):
    first = np.array(extract_features(images, tmp_path / "f.npy", backbone, 8, progress=False))
    source = Counting(images)
    again = extract_features(source, tmp_path / "f.npy", backbone, 8, progress=False)
    assert source.asked == [] and np.array_equal(first, again)


def test_an_interrupted_extraction_resumes_after_its_last_finished_batch(
    tmp_path, backbone, images
):
    out = tmp_path / "f.npy"
    with pytest.raises(KeyboardInterrupt):
        extract_features(Counting(images, fail_at=16), out, backbone, 8, progress=False)
    assert json.loads((tmp_path / "f.progress.json").read_text())["done"] == 16
    assert not out.exists()
    source = Counting(images)
    feats = extract_features(source, out, backbone, 8, progress=False)
    assert source.asked == [16]  # rows 0-15 were kept, only the last batch is computed
    assert np.allclose(feats, _by_hand(backbone, images.batch(0, 22)), atol=1e-4)
    assert not (tmp_path / "f.progress.json").exists()


def test_a_finished_file_made_under_another_fingerprint_is_refused(tmp_path, backbone, images):
    extract_features(images, tmp_path / "f.npy", backbone, 8, fingerprint="a", progress=False)
    with pytest.raises(ValueError, match="delete it"):
        extract_features(images, tmp_path / "f.npy", backbone, 8, fingerprint="b")
    again = extract_features(Counting(images), tmp_path / "f.npy", backbone, 8, fingerprint="a")
    assert again.shape == (22, 512)


def test_resuming_under_another_fingerprint_is_refused(tmp_path, backbone, images):
    with pytest.raises(KeyboardInterrupt):
        extract_features(Counting(images, 8), tmp_path / "f.npy", backbone, 8, fingerprint="a")
    with pytest.raises(ValueError, match="delete it and f.progress.json to start over"):
        extract_features(images, tmp_path / "f.npy", backbone, 8, fingerprint="b")


def test_command_line_writes_features_in_vocabulary_order(tmp_path, backbone):
    items = pd.DataFrame(
        {"ItemId": ["a", "b", "c", "d"], "category": [0, 1, 2, 1], "style": [0.1, 0.5, 0.9, 0.3]}
    )
    items.to_csv(tmp_path / "items.tsv", sep="\t", index=False)
    clicks = pd.DataFrame(  # first seen: d, b, a; c never clicked
        {"SessionId": ["1", "1", "2", "2"], "ItemId": ["d", "b", "a", "d"], "Time": [1, 2, 3, 4]}
    )
    clicks.to_csv(tmp_path / "train.tsv", sep="\t", index=False)
    main(
        [
            "--items",
            str(tmp_path / "items.tsv"),
            "--train",
            str(tmp_path / "train.tsv"),
            "--out",
            str(tmp_path / "f.npy"),
            "--size",
            "16",
        ]
    )
    feats = np.load(tmp_path / "f.npy")
    catalogue = SyntheticImages(items["category"], items["style"], size=16, seed=0)
    expected = _by_hand(backbone, catalogue.batch(0, 4)[[3, 1, 0]])
    assert feats.shape == (3, 512)
    assert np.allclose(feats, expected, atol=1e-4)
