"""One TEM/confocal case of the image-analogy track: the ground truth, the tissue (the
realistic 3D slab of :mod:`.slab` by default, or the 2D model of :mod:`.tissue`), the
two renderings and manual-like landmarks."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..io import LANDMARK_COLUMNS
from ..transforms import DeformationField, Transform, affine_matrix, apply
from . import slab as realistic
from ._common import SyntheticCase, merge_params
from .tissue import make_tissue, render_confocal_2d, render_tem_2d

#: Parameters of the TEM/confocal phantom; config.yaml overrides any of them.
DEFAULT_ANALOGY_PARAMS: dict = {
    "model": "realistic",  # "realistic" (3D slab, distortion) or "simple" (2D, affine only)
    "tem_px_per_um": 58.224,  # paper: 582.24 px/um (sec. 5.1); 10x coarser by default
    "confocal_px_per_um": 7.588,  # paper, sec. 5.1
    "tem_field_um": [13.8, 13.8],  # ~200 x 200 px at 14.52 px/um (paper, sec. 5.3)
    "confocal_field_um": [42.0, 42.0],  # the TEM field is a small box inside it
    "rotation_deg": [1.0, 4.0],  # |rotation| range of the ground-truth affine
    "scale_range": 0.03,  # per-axis scale in 1 +- this
    "shear_range": 0.03,  # shear factor in +- this
    "translation_um": 1.0,  # offset from the nominal box position, magnitude
    "mirror": False,  # mirror the TEM with respect to the confocal
    "n_landmarks": [10, 15],  # paper: "about 10 ~ 15" pairs per case (sec. 5.3)
    "annotator_noise_um": 0.1,  # RMS click error of a manual landmark, per image
    "psf_fwhm_um": 0.25,  # simple model: lateral confocal resolution
    "channel_offset_um": 0.1,  # red and blue offsets from green (chromatic aberration)
    "photons": {"red": 12.0, "green": 40.0, "blue": 18.0},  # simple model: photons at 1
    "read_noise": 2.0,  # grey levels
    "tem_noise": 0.05,  # Gaussian noise of the TEM in [0, 1] units
    "axon_radius_um": [0.15, 1.1],  # axon (inner) radius range, log-uniform
    "g_ratio": [0.65, 0.82],  # inner/outer radius of myelinated axons
    "nucleus_density_per_100um2": 0.6,  # simple model
    "rows_per_tile": 1024,  # TEM rendering strip height (memory bound)
    "field_spacing_um": 0.25,  # grid of the stored ground-truth deformation field
    "realistic": realistic.DEFAULT_REALISTIC_PARAMS,
}


def _farthest_points(rng: np.random.Generator, pts: np.ndarray, k: int) -> np.ndarray:
    chosen = [int(rng.integers(len(pts)))]
    dist = np.hypot(*(pts - pts[chosen[0]]).T)
    while len(chosen) < min(k, len(pts)):
        nxt = int(np.argmax(dist))
        chosen.append(nxt)
        dist = np.minimum(dist, np.hypot(*(pts - pts[nxt]).T))
    return np.array(chosen)


def _ground_truth_affine(
    rng: np.random.Generator, p: dict, tem_wh: np.ndarray, lm_wh: np.ndarray
) -> tuple[np.ndarray, dict, np.ndarray]:
    """Tissue (TEM) um -> confocal um: TEM centre onto a box centre, then a weak affine."""
    half_diag = 0.5 * np.hypot(*tem_wh)
    box_c = rng.uniform((half_diag + 1.5,) * 2, lm_wh - half_diag - 1.5)
    tem_c = tem_wh / 2
    rot = rng.uniform(*p["rotation_deg"]) * rng.choice([-1.0, 1.0])
    scale = 1.0 + rng.uniform(-p["scale_range"], p["scale_range"], 2)
    shear = rng.uniform(-p["shear_range"], p["shear_range"])
    ang = rng.uniform(0, 2 * np.pi)
    t_small = p["translation_um"] * np.array([np.cos(ang), np.sin(ang)])
    gt = affine_matrix(
        rot, tuple(scale), shear, tuple(box_c - tem_c + t_small), bool(p["mirror"]), tuple(tem_c)
    )
    extra = {
        "rotation_deg": rot,
        "scale": scale.tolist(),
        "shear": shear,
        "translation_from_box_um": t_small.tolist(),
    }
    return gt, extra, box_c


def make_analogy_case(
    seed: int,
    index: int,
    params: dict | None = None,
    name: str | None = None,
    *,
    exact_prediction_px_per_um: float | None = None,
) -> SyntheticCase:
    """Generate one TEM/confocal case of the image-analogy track.

    Parameters
    ----------
    seed : int
        Dataset seed; with ``index`` it fixes every random choice.
    index : int
        Case number within the dataset (0-based).
    params : dict, optional
        Overrides of :data:`DEFAULT_ANALOGY_PARAMS` (``model`` picks the tissue model).
    name : str, optional
        Case name (default ``temNN``).
    exact_prediction_px_per_um : float, optional
        Realistic model only: also render the confocal's expected green signal on the
        TEM field at this sampling (px/um), through the section's distortion
        (:func:`clemalign.phantom.slab.render_confocal_green_in_tem_frame`), into
        ``exact_predictions``: ``"exact"``, what a perfect prediction of the confocal
        from the TEM would be, and ``"mean_stain"``, the same with every fibre at the
        mean dye uptake. For benchmarks of what registration could do given an exact
        analogy; the case itself is unchanged.

    Returns
    -------
    SyntheticCase
        ``em`` = TEM (uint8, rows x cols at ``tem_px_per_um``), ``lm`` = confocal RGB
        (uint8, rows x cols x 3 at ``confocal_px_per_um``), manual-like landmarks
        (um, TEM and confocal frames) and the ground truth: ``transform`` (the affine
        TEM um -> confocal um; for the realistic model the least-squares affine of the
        deformation), ``deformation`` (realistic model: the true non-rigid mapping,
        :class:`clemalign.transforms.DeformationField`), the true landmark positions.
    """
    p = merge_params(DEFAULT_ANALOGY_PARAMS, params)
    if p["model"] not in ("realistic", "simple"):
        raise ValueError(f"phantom model must be 'realistic' or 'simple', got {p['model']!r}")
    name = name or f"tem{index + 1:02d}"
    rng = np.random.default_rng([seed, 100, index])
    tem_ppu, lm_ppu = float(p["tem_px_per_um"]), float(p["confocal_px_per_um"])
    tem_shape = tuple(int(round(v * tem_ppu)) for v in p["tem_field_um"][::-1])
    lm_shape = tuple(int(round(v * lm_ppu)) for v in p["confocal_field_um"][::-1])
    tem_wh = np.array([tem_shape[1] / tem_ppu, tem_shape[0] / tem_ppu])
    lm_wh = np.array([lm_shape[1] / lm_ppu, lm_shape[0] / lm_ppu])
    if np.any(lm_wh < tem_wh * 1.5):
        raise ValueError(
            f"confocal field {lm_wh[0]:.1f} x {lm_wh[1]:.1f} um must be at least 1.5x the "
            f"TEM field {tem_wh[0]:.1f} x {tem_wh[1]:.1f} um"
        )
    gt, gt_extra, box_c = _ground_truth_affine(rng, p, tem_wh, lm_wh)
    inv = np.linalg.inv(gt)
    corners = apply(inv, np.array([[0, 0], [lm_wh[0], 0], [0, lm_wh[1]], lm_wh]))
    bounds = (*(corners.min(0) - 1.0), *(corners.max(0) + 1.0))

    if p["model"] == "realistic":
        rendered = _render_realistic(
            rng, p, bounds, tem_wh, tem_shape, lm_shape, gt, exact_prediction_px_per_um
        )
    elif exact_prediction_px_per_um is not None:
        raise ValueError("exact_prediction_px_per_um needs the realistic phantom model")
    else:
        rendered = _render_simple(rng, p, bounds, tem_wh, tem_shape, lm_shape, gt)
    tem, confocal, candidates_em, truth_map, info = rendered

    k = int(rng.integers(p["n_landmarks"][0], p["n_landmarks"][1] + 1))
    if len(candidates_em) < 3:
        raise ValueError(
            f"case {name}: the TEM field ({tem_wh[0]:.2f} x {tem_wh[1]:.2f} um) holds "
            f"{len(candidates_em)} salient structures; landmarks need at least 3"
        )
    true_em = candidates_em[_farthest_points(rng, candidates_em, k)]
    true_lm = truth_map(true_em)
    sigma = p["annotator_noise_um"] / np.sqrt(2.0)  # per axis, so the RMS click error is as set
    em_pts = true_em + rng.normal(0, sigma, true_em.shape)
    lm_pts = true_lm + rng.normal(0, sigma, true_em.shape)
    landmarks = pd.DataFrame(
        {
            "name": [f"L{i + 1:02d}" for i in range(len(true_em))],
            "em_x_um": em_pts[:, 0],
            "em_y_um": em_pts[:, 1],
            "lm_x_um": lm_pts[:, 0],
            "lm_y_um": lm_pts[:, 1],
        }
    )[LANDMARK_COLUMNS]

    field = info.pop("deformation", None)
    exact = info.pop("exact_prediction", None)
    best = field.affine if field is not None else gt
    method = (
        "ground truth (synthetic): least-squares affine of the deformation field"
        if field is not None
        else "ground truth (synthetic)"
    )
    truth = {
        "case": name,
        "track": "analogy",
        "model": p["model"],
        "seed": int(seed),
        "index": int(index),
        "transform": Transform(
            best, moving="em", fixed="lm", method=method, extra=gt_extra
        ).to_dict(),
        "em_px_per_um": tem_ppu,
        "lm_px_per_um": lm_ppu,
        "em_shape": list(tem_shape),
        "lm_shape": list(lm_shape),
        "tem_box_center_in_lm_um": box_c.tolist(),
        "landmarks_true_em_um": true_em.tolist(),
        "landmarks_true_lm_um": true_lm.tolist(),
        "annotator_noise_um": p["annotator_noise_um"],
        **info,
        "params": p,
    }
    if field is not None:
        truth["tissue_to_lm_affine"] = gt.tolist()
        truth["nonrigid_floor_rms_um"] = field.floor_rms_um()
        truth["deformation"] = field.to_dict()
    return SyntheticCase(name, tem, tem_ppu, confocal, lm_ppu, landmarks, truth, exact)


def _inside(pts: np.ndarray, tem_wh: np.ndarray) -> np.ndarray:
    edge = min(0.7, 0.1 * float(tem_wh.min()))
    return pts[np.all((pts > edge) & (pts < tem_wh - edge), axis=1)]


def _render_realistic(rng, p, bounds, tem_wh, tem_shape, lm_shape, gt, exact_ppu=None):
    """3D slab, thin and thick sections, section distortion; truth = deformation field."""
    q = p["realistic"]
    warp = realistic.make_warp(rng, tuple(tem_wh), q)
    reach = realistic.warp_reach_um(warp, tuple(tem_wh))
    tem_box = (-reach - 1.0, -reach - 1.0, tem_wh[0] + reach + 1.0, tem_wh[1] + reach + 1.0)
    slab = realistic.make_slab(rng, bounds, tem_box, p)
    tem = realistic.render_tem(slab, tem_shape, p["tem_px_per_um"], warp, reach, rng, p)
    confocal = realistic.render_confocal(
        slab, lm_shape, p["confocal_px_per_um"], np.linalg.inv(gt), rng, p
    )
    exact = None
    if exact_ppu is not None:  # no random draw: the case is the same with or without it
        exact_shape = tuple(int(round(v * exact_ppu)) for v in tem_wh[::-1])
        mean_stain = float(np.mean(slab.fibres.stain)) if len(slab.fibres) else 1.0
        exact = {
            key: realistic.render_confocal_green_in_tem_frame(
                slab, exact_shape, exact_ppu, warp, p, fibre_stain=stain
            )
            for key, stain in (("exact", None), ("mean_stain", mean_stain))
        }

    def truth_map(xy: np.ndarray) -> np.ndarray:
        xy = np.asarray(xy, float).reshape(-1, 2)
        dx, dy = warp(xy[:, 0], xy[:, 1])
        return apply(gt, xy + np.stack([dx, dy], 1))

    field = DeformationField.from_mapping(
        truth_map, tuple(tem_wh), float(p["field_spacing_um"]), margin_um=1.0
    )
    edge = min(0.7, 0.1 * float(tem_wh.min()))
    inner_box = (edge - reach, edge - reach, tem_wh[0] - edge + reach, tem_wh[1] - edge + reach)
    wanted = int(p["n_landmarks"][1])
    tissue_pts = realistic.landmark_candidates(slab, inner_box, wanted)
    candidates = _inside(realistic.invert_warp(warp, tissue_pts), tem_wh)
    if len(candidates) < 3:  # fibres in the plane only: any cut and granule will do
        tissue_pts = realistic.landmark_candidates(slab, inner_box, wanted, last_resort=True)
        candidates = _inside(realistic.invert_warp(warp, tissue_pts), tem_wh)
    f = slab.fibres
    info = {
        "deformation": field,
        "exact_prediction": exact,
        "section_warp": {
            "cutting_direction": warp.cut.tolist(),
            "compression": warp.compression,
        },
        "counts": {
            "fibres": len(f),
            "fibres_cut_in_tem_field": int(
                np.sum(
                    (np.abs(f.p[:, 2]) < f.r_out)
                    & np.all((f.p[:, :2] > 0) & (f.p[:, :2] < tem_wh), axis=1)
                )
            ),
            "bundles": len(slab.bundle_seeds),
            "bundle_inclinations_deg": [
                float(np.degrees(np.arccos(abs(np.mean(f.v[f.bundle == b, 2])))))
                for b in range(len(slab.bundle_seeds))
                if np.any(f.bundle == b)
            ],
            "nuclei": len(slab.nuclei_z),
            "nuclei_cut_by_tem_section": len(slab.section.nuclei),
            "lipofuscin_spheres": len(slab.lipo3d),
            "mitochondria": len(slab.section.mito),
            "unmyelinated_processes": len(slab.section.processes),
        },
    }
    return tem, confocal, candidates, field.apply, info


def _render_simple(rng, p, bounds, tem_wh, tem_shape, lm_shape, gt):
    """The 2D model of :mod:`.tissue`: one affine between TEM and confocal."""
    tissue = make_tissue(rng, bounds, (0.0, 0.0, tem_wh[0], tem_wh[1]), p)
    tem = render_tem_2d(tissue, tem_shape, p["tem_px_per_um"], rng, p)
    confocal = render_confocal_2d(
        tissue, lm_shape, p["confocal_px_per_um"], np.linalg.inv(gt), rng, p
    )
    ax = tissue.axons
    big = tissue.in_section & (np.minimum(ax.a, ax.b) > 0.35)
    cand = [
        np.stack([ax.cx[big], ax.cy[big]], 1),
        np.stack([tissue.nuclei.cx, tissue.nuclei.cy], 1),
    ]
    for g in np.unique(tissue.lipo_granule):
        sel = tissue.lipo_granule == g
        cand.append(np.array([[tissue.lipo.cx[sel].mean(), tissue.lipo.cy[sel].mean()]]))
    cand = _inside(np.concatenate(cand), tem_wh)
    k_max = int(p["n_landmarks"][1])
    if len(cand) < k_max:  # small fields: smaller axons too, largest first
        small = tissue.in_section & ~big
        order = np.argsort(-np.minimum(ax.a, ax.b)[small])
        extra = _inside(np.stack([ax.cx[small], ax.cy[small]], 1)[order], tem_wh)
        cand = np.concatenate([cand, extra[: k_max - len(cand)]])
    info = {
        "counts": {
            "myelinated_axons_in_section": int(tissue.in_section.sum()),
            "myelinated_axons_out_of_section": int((~tissue.in_section).sum()),
            "nuclei": len(tissue.nuclei),
            "lipofuscin_granules": int(len(np.unique(tissue.lipo_granule))),
            "mitochondria": len(tissue.mito),
            "unmyelinated_processes": len(tissue.processes),
        }
    }
    return tem, confocal, cand, lambda xy: apply(gt, xy), info
