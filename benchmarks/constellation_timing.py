"""Crowded bead candidates: constellation_register against robust_register.

Synthetic candidate sets as in ``tests/test_constellation.py``: ``--pairs`` beads seen in
both images (plus 20 % of all beads seen only in the moving image), in a 20 x 20 um
field, independent distractors in each image up to ``N`` candidates (0.3 um apart),
30 nm localisation noise, a random affine (any rotation, mirror on odd seeds, scale
0.9-1.1, anisotropy 1.2, shear 0.05). A seed succeeds when the mean error at the beads
is below 0.1 um (a FiducialError is a failure). Printed per N: success rate, median time
of the first ``--runs`` seeds (each seed is one run) and, for constellation_register, the
median numbers of hypotheses screened and of consistent pairs returned.

robust_register needs ~3 s at 100 candidates and ~4 min at 400 on 2 cores, so by default
it runs on ``--peer-seeds 5`` seeds only (the table says how many).

    python benchmarks/constellation_timing.py [--sizes 100 200 300 400] [--pairs 20]
        [--seeds 20] [--runs 5] [--peer-seeds 5]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from clemalign.constellation import constellation_register
from clemalign.fiducials import FiducialError, robust_register
from clemalign.transforms import apply

FIELD_UM = 20.0


def spaced(rng, n, min_dist, existing=()):
    """Up to ``n`` uniform points in the field, ``min_dist`` um apart (dart throwing)."""
    taken = [np.asarray(p, float) for p in existing]
    new = []
    for _ in range(200 * n):
        if len(new) == n:
            break
        c = rng.uniform(0.0, FIELD_UM, 2)
        if not taken or np.min(np.sum((np.asarray(taken) - c) ** 2, axis=1)) >= min_dist**2:
            taken.append(c)
            new.append(c)
    return np.asarray(new).reshape(-1, 2)


def candidates(seed, n_pairs, n_candidates, missing=0.2, noise_um=0.03):
    """Moving and fixed candidates (um), the truth (moving -> fixed), the beads (moving)."""
    rng = np.random.default_rng(seed)
    theta, phi = rng.uniform(0, 2 * np.pi, 2)

    def rot(a):
        return np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])

    stretch = rot(phi) @ np.diag([np.sqrt(1.2), 1 / np.sqrt(1.2)]) @ rot(-phi)
    linear = rng.uniform(0.9, 1.1) * rot(theta) @ np.array([[1, 0.05], [0, 1]]) @ stretch
    if seed % 2:
        linear = linear @ np.diag([-1.0, 1.0])
    truth = np.eye(3)
    truth[:2, :2], truth[:2, 2] = linear, rng.uniform(-5, 5, 2)
    inverse = np.linalg.inv(truth)
    n_beads = int(round(n_pairs / (1 - missing)))
    beads = spaced(rng, n_beads, 0.6)
    src = np.vstack(
        [apply(inverse, beads), apply(inverse, spaced(rng, n_candidates - n_beads, 0.3, beads))]
    )
    dst = np.vstack([beads[:n_pairs], spaced(rng, n_candidates - n_pairs, 0.3, beads[:n_pairs])])
    src += rng.normal(0, noise_um, src.shape)
    dst += rng.normal(0, noise_um, dst.shape)
    return (
        src[rng.permutation(len(src))],
        dst[rng.permutation(len(dst))],
        truth,
        apply(inverse, beads),
    )


def run(method, seed, n_pairs, n_candidates):
    """(success, seconds, result or None) of one method on one seed."""
    src, dst, truth, beads = candidates(seed, n_pairs, n_candidates)
    start = time.perf_counter()
    try:
        res = method(src, dst)
    except FiducialError:
        return False, time.perf_counter() - start, None
    seconds = time.perf_counter() - start
    error = np.mean(np.hypot(*(apply(res.matrix, beads) - apply(truth, beads)).T))
    return bool(error < 0.1), seconds, res


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 200, 300, 400])
    parser.add_argument("--pairs", type=int, default=20)
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--peer-seeds", type=int, default=5)
    args = parser.parse_args()
    run(constellation_register, 0, args.pairs, 40)  # compile (or load) the numba kernels
    print(f"{args.pairs} true pairs, 20 x 20 um field, success = mean bead error < 0.1 um")
    header = (
        f"{'N':>5} | {'constellation':>13} {'median s':>9} {'hypotheses':>11} {'pairs':>6} | "
        f"{'robust':>10} {'median s':>9}"
    )
    print(header)
    print("-" * len(header))
    for n in args.sizes:
        ours = [run(constellation_register, s, args.pairs, n) for s in range(args.seeds)]
        peer = [run(robust_register, s, args.pairs, n) for s in range(args.peer_seeds)]
        hyp = np.median([r[2].n_hypotheses for r in ours if r[2] is not None] or [0])
        pairs = np.median([r[2].info["n_consistent"] for r in ours if r[2] is not None] or [0])
        print(
            f"{n:>5} | {sum(r[0] for r in ours):>4d}/{len(ours):<2d} {'':>6}"
            f"{np.median([r[1] for r in ours[: args.runs]]):>9.2f} {hyp:>11.2e} {pairs:>6.0f} | "
            f"{sum(r[0] for r in peer):>4d}/{len(peer):<2d} {'':>3}"
            f"{np.median([r[1] for r in peer[: args.runs]]):>9.2f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
