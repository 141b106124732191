import numpy as np
import pytest

from training.data.images import SyntheticImages
from training.data.synthetic import generate


def _images(n_per_category=12, n_categories=10, seed=0, size=24):
    rng = np.random.default_rng(seed)
    category = np.repeat(np.arange(n_categories), n_per_category)
    return SyntheticImages(category, rng.random(len(category)), n_categories, size, seed)


def test_pictures_are_uint8_rgb_and_the_same_for_the_same_seed():
    a, b = _images().batch(0, 30), _images().batch(0, 30)
    assert a.shape == (30, 3, 24, 24) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert not np.array_equal(a, _images(seed=1).batch(0, 30))


def test_a_picture_does_not_depend_on_the_batch_it_is_drawn_in():
    images = _images()
    whole = images.batch(0, 40)
    assert np.array_equal(whole[7:19], images.batch(7, 19))
    assert len(images.batch(115, 500)) == 5  # clipped at the last item


def test_the_category_can_be_read_back_from_the_colours():
    """Nearest mean colour per category on one half classifies the other half."""
    images = _images(n_per_category=20)
    pics = images.batch(0, len(images)).astype(np.float64)
    colour = np.concatenate([pics.mean(axis=(2, 3)), pics.std(axis=(2, 3))], axis=1)
    train = np.arange(len(images)) % 2 == 0
    centroids = np.stack(
        [colour[train & (images.category == c)].mean(0) for c in range(images.n_categories)]
    )
    dist = ((colour[~train, None, :] - centroids[None]) ** 2).sum(-1)
    accuracy = (dist.argmin(1) == images.category[~train]).mean()
    assert accuracy > 0.9  # chance is 0.1


def _spectrum(pic: np.ndarray) -> np.ndarray:
    """Phase-free look: magnitude of the 2-D Fourier transform of the grey picture."""
    grey = pic.astype(np.float64).mean(0)
    return np.abs(np.fft.fft2(grey - grey.mean()))


@pytest.mark.parametrize("category", [0, 1, 2, 3])  # one of each pattern family
def test_nearby_styles_look_more_alike_than_distant_ones_around_the_circle(category):
    styles = np.array([0.10, 0.13, 0.60, 0.98, 0.05])
    images = SyntheticImages(np.full(5, category), styles, 4, size=32, noise=0.0)
    spec = [_spectrum(p) for p in images.batch(0, 5)]

    def d(i, j):
        return np.linalg.norm(spec[i] - spec[j])

    assert d(0, 1) < d(0, 2)  # 0.10 is nearer 0.13 than 0.60
    assert d(3, 4) < d(3, 2)  # 0.98 is nearer 0.05 (around the circle) than 0.60


def test_subset_keeps_each_items_picture():
    images = _images()
    order = np.array([50, 3, 77, 3])
    assert np.array_equal(images.subset(order).batch(0, 4), images.batch(0, 120)[order])


def test_pictures_from_a_synthetic_catalogue():
    cat = generate(n_items=60, n_sessions=10, n_categories=5, seed=0)
    images = SyntheticImages.from_catalog(cat, size=16)
    assert len(images) == 60 and images.n_categories == cat.item_category.max() + 1
    assert images.batch(0, 60).shape == (60, 3, 16, 16)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"category": [0, 5], "n_categories": 3}, "categories must lie in"),
        ({"category": [0, 1], "style": [0.1]}, "one per item"),
        ({"category": [0, 1], "size": 4}, "too small"),
    ],
)
def test_bad_arguments_are_refused_with_a_reason(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SyntheticImages(**kwargs)
