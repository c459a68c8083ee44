"""The original image analogies (clemalign.hertzmann): known answers on small images."""

import numpy as np
import pytest
from scipy import ndimage

from clemalign.hertzmann import gaussian_pyramid, image_analogy

N = 48  # image side, px
SMALL = {"patch_size": 7, "levels": 2}  # small images: a smaller neighbourhood


def _field(seed: int, n: int = N, sigma: float = 3.0) -> np.ndarray:
    """A smooth random field scaled to [0, 1]."""
    rng = np.random.default_rng(seed)
    img = ndimage.gaussian_filter(rng.standard_normal((n, n)), sigma)
    return (img - img.min()) / (img.max() - img.min())


def _f(x: np.ndarray) -> np.ndarray:
    """Non-linear, non-monotonic pixel map: the 'other modality'."""
    return 4.0 * (x - 0.5) ** 2


def _pairs(seeds=(1, 3)):
    return [(_field(s), _f(_field(s))) for s in seeds]


def _corr(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.corrcoef(x.ravel(), y.ravel())[0, 1])


@pytest.fixture(scope="module")
def default_run():
    return image_analogy(_field(2), _pairs(), **SMALL)


def test_texture_by_numbers_learns_a_nonlinear_map(default_run):
    b = _field(2)  # unseen
    assert _corr(default_run.image, _f(b)) > 0.9
    # the map is not monotonic: B itself does not predict f(B)
    assert abs(_corr(b, _f(b))) < 0.5


def test_info_has_one_entry_per_level_coarsest_first(default_run):
    info = default_run.info
    assert info["level_shapes"] == [[N // 2, N // 2], [N, N]]
    for key in ("seconds", "seconds_scan", "coherence_fraction", "n_training_px"):
        assert len(info[key]) == 2, key
    assert info["feature_dim"][0] < info["feature_dim"][1]  # coarse patches at the finer level
    assert info["params"]["coarse_patch_size"] == 3 and info["params"]["n_pairs"] == 2
    assert info["seconds_total"] >= sum(info["seconds"])
    assert "ann_agreement" not in info


def test_texture_by_numbers_default_patch_size():
    b = _field(2, 80)
    pairs = [(_field(s, 80), _f(_field(s, 80))) for s in (1, 3)]
    result = image_analogy(b, pairs, levels=2)  # 15x15, as the paper
    assert _corr(result.image, _f(b)) > 0.9


def test_source_map_is_consistent(default_run):
    pairs = _pairs()
    src = default_run.source
    assert src.shape == (N, N, 3) and src.dtype == np.int32
    copied = np.array([pairs[i][1][r, c] for i, r, c in src.reshape(-1, 3)]).reshape(N, N)
    np.testing.assert_array_equal(default_run.image, copied)
    assert default_run.image.dtype == np.float64 and default_run.coherent.dtype == bool


def test_kappa_zero_is_pure_ann_and_large_kappa_copies_coherent_patches():
    b, pairs = _field(2), _pairs()
    plain = image_analogy(b, pairs, kappa=0.0, **SMALL)
    assert not plain.coherent.any()
    assert plain.info["coherence_fraction"] == [0.0, 0.0]
    strong = image_analogy(b, pairs, kappa=100.0, **SMALL)
    assert strong.info["coherence_fraction"][-1] > 0.5
    # coherent copies: a pixel's source continues its left neighbour's source
    s = strong.source
    cont = (s[:, 1:, 0] == s[:, :-1, 0]) & (s[:, 1:, 1] == s[:, :-1, 1])
    cont &= s[:, 1:, 2] == s[:, :-1, 2] + 1
    s0 = plain.source
    cont0 = (s0[:, 1:, 0] == s0[:, :-1, 0]) & (s0[:, 1:, 1] == s0[:, :-1, 1])
    cont0 &= s0[:, 1:, 2] == s0[:, :-1, 2] + 1
    assert cont.mean() > 0.75
    assert cont.mean() > cont0.mean()


def test_ann_agrees_with_exact_search():
    b, pairs = _field(2), _pairs()
    exact = image_analogy(b, pairs, exact=True, check_ann=True, **SMALL)
    ann = image_analogy(b, pairs, **SMALL)
    # per query, on the exact run's state
    assert min(exact.info["ann_agreement"]) > 0.97
    # end to end (a differing match changes later neighbourhoods too)
    same = np.all(exact.source == ann.source, axis=-1).mean()
    assert same > 0.9
    assert _corr(exact.image, ann.image) > 0.9


def test_training_image_reproduces_itself_with_exact_search():
    a = _field(5)
    result = image_analogy(a, [(a, _f(a))], exact=True, kappa=0.0, max_training_px=None, **SMALL)
    np.testing.assert_array_equal(result.image, _f(a))


def test_deterministic():
    b, pairs = _field(2), _pairs()
    one = image_analogy(b, pairs, max_training_px=900, seed=3, **SMALL)
    two = image_analogy(b, pairs, max_training_px=900, seed=3, **SMALL)
    np.testing.assert_array_equal(one.image, two.image)
    np.testing.assert_array_equal(one.source, two.source)
    np.testing.assert_array_equal(one.coherent, two.coherent)


def test_training_windows_respect_the_budget():
    b, pairs = _field(2), _pairs()
    result = image_analogy(b, pairs, max_training_px=800, **SMALL)
    assert all(n <= 800 for n in result.info["n_training_px"])
    assert result.info["n_training_px"][-1] == 800  # two 20x20 windows
    for i in range(2):  # sources of each pair inside one 20x20 window
        sel = result.source[..., 0] == i
        rows, cols = result.source[..., 1][sel], result.source[..., 2][sel]
        assert rows.max() - rows.min() < 20 and cols.max() - cols.min() < 20


def test_nan_in_a_prime_is_never_copied_or_matched():
    b, pairs = _field(2), _pairs()
    a, ap = pairs[0]
    ap = ap.copy()
    ap[:, 30:] = np.nan  # no confocal data on the right
    result = image_analogy(b, [(a, ap), pairs[1]], **SMALL)
    assert np.all(np.isfinite(result.image))
    from_first = result.source[..., 0] == 0
    # whole 7x7 neighbourhood NaN-free: column + 3 < 30
    assert np.all(result.source[..., 2][from_first] <= 26)
    assert _corr(result.image, _f(b)) > 0.8


def test_gaussian_pyramid_shapes_and_missing_data():
    img = _field(1, 50)
    img[:, :10] = np.nan
    pyr = gaussian_pyramid(img, 3)
    assert [p.shape for p in pyr] == [(50, 50), (25, 25), (13, 13)]
    assert np.isnan(pyr[1][:, :5]).all() and np.isfinite(pyr[1][:, 8:]).all()


@pytest.mark.parametrize(
    ("b", "pairs", "message"),
    [
        (np.zeros((8, 8, 3)), [(np.zeros((8, 8)), np.zeros((8, 8)))], "b must be a 2D"),
        (np.zeros((8, 8)), [], "pairs is empty"),
        (np.zeros((8, 8)), [(np.zeros((8, 8)), np.zeros((8, 9)))], r"pairs\[0\].*differ"),
        (np.zeros((8, 8)), [(np.zeros((8, 8, 2)), np.zeros((8, 8)))], r"pairs\[0\].*2D"),
        (np.full((8, 8), np.nan), [(np.zeros((8, 8)), np.zeros((8, 8)))], "b holds non-finite"),
    ],
)
def test_bad_input_raises(b, pairs, message):
    with pytest.raises(ValueError, match=message):
        image_analogy(b, pairs, patch_size=3, levels=1)


def test_bad_parameters_raise():
    b, pairs = _field(2, 16), [(_field(1, 16), _field(3, 16))]
    with pytest.raises(ValueError, match="patch_size"):
        image_analogy(b, pairs, patch_size=4)
    with pytest.raises(ValueError, match="kappa"):
        image_analogy(b, pairs, kappa=-1.0)
    with pytest.raises(ValueError, match="no valid training pixel"):
        image_analogy(b, [(pairs[0][0], np.full((16, 16), np.nan))], patch_size=3, levels=1)
