"""Original image analogies (:mod:`clemalign.hertzmann`): speed, search accuracy, tuning.

Data
----
*Phantom*: the preprocessed synthetic cases of the workflow when present
(``results/preprocessed/temNN/{em.tif,lm.tif,landmarks.csv}``), else generated with
``make_analogy_case(2012, i, {})`` and ``prepare_analogy_pair`` (14.52 px/um). The TEM
is inverted as the sparse method codes it; the confocal is brought into the TEM frame
by the landmark affine (``confocal_in_em_frame``, NaN outside). The test case is
``tem01`` with the training cases the sparse method used for it
(``results/analogy/tem01/sparse_prediction.json``; else ``tem03``, ``tem05``), and for
the tuning sweeps also ``tem04`` (training ``tem01``, ``tem05``). ``B'`` is scored by
the Pearson r against that case's own registered confocal (pixels with data).

*Texture by numbers*: smooth random fields (Gaussian-filtered white noise, sigma 3 px,
scaled to [0, 1]), 128x128, ``A' = 4 (A - 0.5)^2`` (non-linear, non-monotonic); two
training pairs, ``B`` an unseen field, scored by Pearson r of ``B'`` against ``f(B)``.

Parts
-----
(a) Timing: 200x200 ``B``, 3 levels, ``max_training_px`` 10000 and 20000, defaults
    otherwise; one warm-up run (numba compilation, excluded), then the median of
    ``--repeats`` runs per level (setup = pyramids/features/PCA; scan = the scan-line
    search) and in total.
(b) Exact reference: a 64x64 crop of the test TEM with 64x64 crops of the training
    pairs (15x15, 2 levels): ``exact=True`` against the approximate search with 8, 16
    (default) and 32 re-ranked candidates; the
    fraction of pixels whose match (source) differs end to end, and the fraction where
    the approximate search disagrees with the exact one on the exact run's own state
    (per query, ``check_ann``) -- the latter is what the approximation alone explains,
    the former adds the knock-on effect on later neighbourhoods.
(c) Tuning: kappa in {0, 0.25, 0.5, 1, 2, 5} on both data sets; the Gaussian weight
    sigma (fraction of the patch side) at kappa 0.5; luminance remapping on/off. Each
    setting is run with two seeds (placement of the training windows), as single runs
    vary by a few hundredths of r.

Run it (about 15 minutes on 2 shared cores)::

    python benchmarks/hertzmann.py [--repeats 3] [--no-sweep]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

from clemalign.hertzmann import image_analogy
from clemalign.io import read_image, read_landmarks
from clemalign.sparse_analogy import em_for_coding
from clemalign.training import confocal_in_em_frame

ROOT = Path(__file__).resolve().parents[1]
PRE = ROOT / "results" / "preprocessed"


def _case_from_disk(name: str) -> tuple[np.ndarray, np.ndarray] | None:
    d = PRE / name
    if not all((d / f).exists() for f in ("em.tif", "lm.tif", "landmarks.csv")):
        return None
    em, ppu = read_image(d / "em.tif")
    lm, _ = read_image(d / "lm.tif")
    conf = confocal_in_em_frame(em, lm, ppu, read_landmarks(d / "landmarks.csv"))
    return em_for_coding(em, "inverted"), conf


def _case_generated(name: str) -> tuple[np.ndarray, np.ndarray]:
    from clemalign.phantom import make_analogy_case
    from clemalign.preprocess import prepare_analogy_pair

    case = make_analogy_case(2012, int(name[3:]) - 1, {})
    pp = prepare_analogy_pair(
        case.em, case.em_px_per_um, case.lm, case.lm_px_per_um, case.landmarks, "green"
    )
    em = pp.em.astype(np.float64)
    conf = confocal_in_em_frame(em, pp.lm.astype(np.float64), pp.px_per_um, pp.landmarks)
    return em_for_coding(em, "inverted"), conf


def phantom_case(test: str, default_training: list[str]):
    """(B, true B', training pairs, source of the data) for one test case."""
    info = ROOT / "results" / "analogy" / test / "sparse_prediction.json"
    training = default_training
    if info.exists():
        training = json.loads(info.read_text()).get("training_cases", training)
    loaded = [_case_from_disk(n) for n in [test, *training]]
    origin = "results/preprocessed"
    if any(x is None for x in loaded):
        loaded = [_case_generated(n) for n in [test, *training]]
        origin = "generated (seed 2012)"
    (b, truth), *pairs = loaded
    return b, truth, pairs, f"{test} <- {'+'.join(training)} ({origin})"


def _field(seed: int, n: int, sigma: float = 3.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = ndimage.gaussian_filter(rng.standard_normal((n, n)), sigma)
    return (img - img.min()) / (img.max() - img.min())


def _f(x: np.ndarray) -> np.ndarray:
    return 4.0 * (x - 0.5) ** 2


def texture_by_numbers(n: int = 128):
    b = _field(2, n)
    pairs = [(_field(s, n), _f(_field(s, n))) for s in (1, 3)]
    return b, _f(b), pairs


def pearson(image: np.ndarray, truth: np.ndarray) -> float:
    ok = np.isfinite(truth)
    return float(np.corrcoef(image[ok], truth[ok])[0, 1])


def part_timing(b, pairs, repeats: int) -> None:
    print("\n(a) Timing: 200x200 B, 3 levels, 15x15 patches, defaults otherwise")
    image_analogy(b, pairs, max_training_px=5000)  # warm-up: numba compile/cache load
    head = (
        f"{'max_training_px':>15} {'level':>6} {'shape':>9} {'n_train':>8} "
        f"{'setup s':>8} {'scan s':>8} {'total s':>8} {'coh frac':>8}"
    )
    print(head)
    print("-" * len(head))
    for budget in (10000, 20000):
        runs = [image_analogy(b, pairs, max_training_px=budget) for _ in range(repeats)]
        info = runs[0].info
        sec = np.median([r.info["seconds"] for r in runs], axis=0)
        scan = np.median([r.info["seconds_scan"] for r in runs], axis=0)
        for i, k in enumerate(range(info["levels"] - 1, -1, -1)):
            shape = "x".join(map(str, info["level_shapes"][i]))
            print(
                f"{budget:>15} {k:>6} {shape:>9} {info['n_training_px'][i]:>8} "
                f"{sec[i] - scan[i]:>8.2f} {scan[i]:>8.2f} {sec[i]:>8.2f} "
                f"{info['coherence_fraction'][i]:>8.3f}"
            )
        total = float(np.median([r.info["seconds_total"] for r in runs]))
        spread = [round(r.info["seconds_total"], 2) for r in runs]
        blank = f"{'':>9} {'':>8} {'':>8} {'':>8}"
        print(f"{budget:>15} {'all':>6} {blank} {total:>8.2f}  runs {spread}")
    print(f"search: {info['search']}")


def part_exact(b, truth, pairs) -> None:
    print("\n(b) Exact search reference: 64x64 crop of B, 64x64 crops of the pairs, 2 levels")
    r0, c0 = (np.array(b.shape) - 64) // 2
    sl = np.s_[r0 : r0 + 64, c0 : c0 + 64]
    bs, ts = b[sl], truth[sl]
    ps = [(a[sl], ap[sl]) for a, ap in pairs]
    head = (
        f"{'n_candidates':>12} {'exact s':>8} {'approx s':>8} {'differ e2e':>10} "
        f"{'per-query (coarse, fine)':>25} {'r exact':>8} {'r approx':>8} {'r(e, a)':>8}"
    )
    print(head)
    print("-" * len(head))
    for n_cand in (8, 16, 32):
        t = time.perf_counter()
        exact = image_analogy(bs, ps, levels=2, exact=True, check_ann=True, n_candidates=n_cand)
        t_exact = time.perf_counter() - t
        t = time.perf_counter()
        ann = image_analogy(bs, ps, levels=2, n_candidates=n_cand)
        t_ann = time.perf_counter() - t
        differ = 1.0 - float(np.all(exact.source == ann.source, axis=-1).mean())
        per_query = ", ".join(f"{1.0 - a:.4f}" for a in exact.info["ann_agreement"])
        print(
            f"{n_cand:>12} {t_exact:>8.2f} {t_ann:>8.2f} {differ:>10.4f} {per_query:>25} "
            f"{pearson(exact.image, ts):>8.3f} {pearson(ann.image, ts):>8.3f} "
            f"{pearson(ann.image, exact.image):>8.3f}"
        )
    print(f"training px per level: {exact.info['n_training_px']}")
    print(
        "differ e2e: fraction of pixels whose match (source) differs between the exact and "
        "the approximate run (finest level);\nper-query: fraction where the approximate "
        "search returns another match than the exact one on the exact run's own state."
    )


def part_sweep(datasets, seeds=(0, 1)) -> None:
    print(
        "\n(c) Tuning: Pearson r of B' vs the true B' (mean over seeds "
        f"{list(seeds)} of the training windows; min-max in brackets); defaults otherwise"
    )
    settings = [{"kappa": k} for k in (0.0, 0.25, 0.5, 1.0, 2.0, 5.0)]
    settings += [{"kappa": 0.5, "weight_sigma": w} for w in (0.05, 0.12, 0.25)]
    settings += [{"kappa": 0.5, "remap_luminance": True}]
    names = list(datasets)
    head = f"{'setting':<36}" + "".join(f"{n:>26}" for n in names) + f"{'mean':>8}"
    print(head)
    print("-" * len(head))
    for s in settings:
        cells, means = "", []
        for n in names:
            b, truth, pairs = datasets[n]
            rs, coh = [], []
            for seed in seeds:
                res = image_analogy(b, pairs, seed=seed, **s)
                rs.append(pearson(res.image, truth))
                coh.append(res.info["coherence_fraction"][-1])
            means.append(np.mean(rs))
            cells += f"{np.mean(rs):>8.3f} [{min(rs):.3f}-{max(rs):.3f}] c{np.mean(coh):.2f}"
        label = ", ".join(f"{k}={v}" for k, v in s.items())
        print(f"{label:<36}{cells}{np.mean(means):>8.3f}", flush=True)
    print("c: fraction of pixels where the coherence candidate won (finest level)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-sweep", action="store_true")
    args = parser.parse_args()

    b, truth, pairs, label = phantom_case("tem01", ["tem03", "tem05"])
    print(f"phantom: {label}, B {b.shape}, pairs {[a.shape for a, _ in pairs]}")
    part_timing(b, pairs, args.repeats)
    part_exact(b, truth, pairs)
    if not args.no_sweep:
        b4, t4, p4, label4 = phantom_case("tem04", ["tem01", "tem05"])
        print(f"\nphantom 2: {label4}")
        part_sweep(
            {
                "texture-by-numbers": texture_by_numbers(),
                "tem01": (b, truth, pairs),
                "tem04": (b4, t4, p4),
            }
        )


if __name__ == "__main__":
    main()
