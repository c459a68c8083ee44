"""Fiducial registration under distortions the paper's method does not model.

For many seeds, synthetic SEM/confocal bead cases with 6-10 % shear and 8-10 %
anisotropic scale (plus the default missing/spurious beads) go through the whole
pipeline (detection, matching, refinement). A case succeeds when its landmark MAE is
below half a confocal pixel (20 nm). Prints success rates, median MAE and median time
per method.

    python benchmarks/fiducial_stress.py [n_seeds]
"""

from __future__ import annotations

import sys
import time

import numpy as np

from clemalign.fiducials import FiducialError, algorithm1, detect_beads, robust_register
from clemalign.phantom import make_fiducial_case
from clemalign.preprocess import to_unit_float
from clemalign.transforms import apply

VIEWS = [
    {
        "px_nm": 20,
        "size_px": [640, 640],
        "rotation_deg": 12.0,
        "scale": [1.0, 0.92],
        "shear": 0.08,
        "mirror": False,
    },
    {
        "px_nm": 16,
        "size_px": [700, 700],
        "rotation_deg": -35.0,
        "scale": [1.10, 1.0],
        "shear": -0.06,
        "mirror": True,
    },
    {
        "px_nm": 20,
        "size_px": [640, 640],
        "rotation_deg": 60.0,
        "scale": [0.9, 1.0],
        "shear": 0.10,
        "mirror": False,
    },
]


def main(n_seeds: int) -> None:
    stats: dict[str, dict[str, list]] = {
        m: {"ok": [], "mae": [], "t": []} for m in ("algorithm1", "robust")
    }
    for seed in range(n_seeds):
        for index in range(len(VIEWS)):
            case = make_fiducial_case(seed, index, {"views": VIEWS})
            em_xy = case.landmarks[["em_x_um", "em_y_um"]].to_numpy()
            lm_xy = case.landmarks[["lm_x_um", "lm_y_um"]].to_numpy()
            em = detect_beads(to_unit_float(case.em), case.em_px_per_um, 0.1, 0.0).xy_um
            lm = detect_beads(to_unit_float(case.lm), case.lm_px_per_um, 0.1, 0.25).xy_um
            for method, run in (("algorithm1", algorithm1), ("robust", robust_register)):
                start = time.perf_counter()
                try:
                    matrix = run(em, lm).matrix
                    mae = np.mean(np.hypot(*(apply(matrix, em_xy) - lm_xy).T)) * 1000
                except FiducialError:
                    mae = np.inf
                stats[method]["t"].append(time.perf_counter() - start)
                stats[method]["mae"].append(mae)
                stats[method]["ok"].append(mae < 20.0)
    n = n_seeds * len(VIEWS)
    print(f"{n} sheared / anisotropic cases ({n_seeds} seeds x {len(VIEWS)} views)")
    print(f"{'method':<12} {'success':>9} {'median MAE nm':>14} {'median time s':>14}")
    for method, s in stats.items():
        print(
            f"{method:<12} {np.mean(s['ok']):>9.1%} {np.median(s['mae']):>14.2f} "
            f"{np.median(s['t']):>14.4f}"
        )
    t_a1, t_rb = np.median(stats["algorithm1"]["t"]), np.median(stats["robust"]["t"])
    print(f"robust / algorithm1 time ratio: {t_rb / t_a1:.1f}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 25)
