"""Crowded bead cases and negative controls for stress-testing fiducial registration.

Real bead images are crowded (issue #14): besides 15-30 beads seen in both images,
each image holds hundreds of bright bead-like spots that have no counterpart in the
other (fluorescent puncta in the light microscope, vesicles and granules in the SEM),
the SEM may be tilted (an anisotropic scale up to 1.25), mirrored, and carry a databar.
This module draws such cases from seeded ranges on top of the bead phantom's stress
options (:mod:`clemalign.phantom.beads`), and builds negative controls: an SEM image
and a confocal image of two unrelated bead fields.

* :func:`stress_params`: phantom parameters of one crowded case, drawn from ``seed``.
* :func:`detection_settings`: the matching overrides of
  :data:`clemalign.fiducials.DEFAULT_FIDUCIAL_SETTINGS` (bead size, confocal PSF).
* :func:`make_stress_case`: the case itself (a :class:`SyntheticCase`).
* :func:`make_unrelated_bead_pair`: a negative control, nothing corresponds.

Families
--------
``gold``
    SEM / confocal with 100 nm gold beads: 511 px confocal at 40 nm, PSF 250 nm; SEM
    at 15-25 nm per px, 560-700 px a side.
``fluorescent``
    SEM / light microscope with 0.2-1 um fluorescent beads: SEM at 1/9-1/5 of the bead
    diameter per px (at least 20 nm; field at most 60 um), 600-800 px a side; light
    microscope at 1/4-1/2.5 of the bead diameter per px (60-400 nm), PSF FWHM 250-400
    nm or 2-3 px whichever is larger, 400-1024 px covering 1.15-1.5 x the SEM field.

Both: 15-30 beads visible in both images (targeted; the drawn field can hold a few
more or less), 200-400 bright candidates per image (targeted, through the puncta),
tilt anisotropy uniform in [1, 1.25] about a random axis, rotation uniform, mirror in
half of the cases, a databar (6-10 % of the rows) in half, 10-30 % of the beads in the
SEM field buried, small calibration errors (scale 1 +- 0.5 %, shear +- 0.005).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..io import LANDMARK_COLUMNS
from ._common import SyntheticCase, merge_params
from .beads import (
    _EM_EDGE_MARGIN_UM,
    _LM_EDGE_MARGIN_UM,
    DEFAULT_FIDUCIAL_PARAMS,
    _case_parts,
    _field_half_extent,
    _sem_view,
    _world,
    make_fiducial_case,
)

#: Families of stress cases (see the module docstring).
STRESS_FAMILIES = ("gold", "fluorescent")

#: Share of the puncta that end up as detected candidates, (SEM, confocal) per family
#: (measured with the default detection on seeds 0-23: the rest merge with a
#: neighbour, fall below the automatic threshold or leave the size range).
_PUNCTA_YIELD = {"gold": (0.95, 0.76), "fluorescent": (0.87, 0.94)}
_LM_DIM_FRACTION = 0.05  # DEFAULT_FIDUCIAL_PARAMS["missing_in_lm"]

#: Random-stream tags: recipes, the confocal world and the SEM world of a negative control.
_RECIPE_STREAM = 5000
_NEGATIVE_LM_WORLD = 9001
_NEGATIVE_EM_WORLD = 9002


def _family(seed: int, family: str | None) -> str:
    """The given family (checked), else alternate by seed parity."""
    if family is None:
        return STRESS_FAMILIES[int(seed) % len(STRESS_FAMILIES)]
    if family not in STRESS_FAMILIES:
        raise ValueError(f"family must be one of {STRESS_FAMILIES}, got {family!r}")
    return family


def _gold_optics(rng: np.random.Generator) -> dict:
    """100 nm gold beads, the paper's confocal; SEM pixel size (nm) and side (px)."""
    return {
        "bead_diameter_nm": 100.0,
        "confocal_px_nm": 40.0,
        "confocal_size_px": int(DEFAULT_FIDUCIAL_PARAMS["confocal_size_px"]),
        "psf_fwhm_nm": 250.0,
        "sem_px_nm": float(rng.uniform(15.0, 25.0)),
        "sem_side_px": rng.integers(560, 701, 2),
    }


def _fluorescent_optics(rng: np.random.Generator) -> dict:
    """0.2-1 um beads: SEM at 1/9-1/5 of a bead per px (field <= 60 um); the light
    microscope at 1/4-1/2.5 of a bead per px, PSF 250-400 nm or 2-3 px."""
    bead = round(float(rng.uniform(200.0, 1000.0)), 1)
    side_px = rng.integers(600, 801, 2)
    sem_px = max(20.0, min(bead / float(rng.uniform(5.0, 9.0)), 60000.0 / float(side_px.max())))
    lm_px = min(400.0, max(60.0, bead / float(rng.uniform(2.5, 4.0))))
    psf = max(float(rng.uniform(250.0, 400.0)), float(rng.uniform(2.0, 3.0)) * lm_px)
    return {
        "bead_diameter_nm": bead,
        "confocal_px_nm": round(lm_px, 2),
        "psf_fwhm_nm": round(psf, 1),
        "sem_px_nm": sem_px,
        "sem_side_px": side_px,
        "lm_room": float(rng.uniform(1.15, 1.5)),  # confocal side / SEM field extent
    }


def _fit_confocal(optics: dict, view: dict) -> None:
    """Size the light-microscope image (400-1024 px) to ``lm_room`` x the SEM field's
    extent; past 1024 px its pixels grow instead."""
    sem = _sem_view(view)
    extent = float(np.max(2.0 * _field_half_extent(sem.linear, sem.width_um, sem.height_um)))
    side_um = extent * optics.pop("lm_room") + 2.0 * _EM_EDGE_MARGIN_UM + 0.2
    n_px = int(np.ceil(side_um * 1000.0 / optics["confocal_px_nm"]))
    if n_px > 1024:
        n_px = 1024
        optics["confocal_px_nm"] = float(np.ceil(side_um * 1e5 / n_px) / 100.0)
    optics["confocal_size_px"] = max(400, n_px)


def _view(rng: np.random.Generator, optics: dict) -> dict:
    """A random SEM view. Gold: its pixel size shrinks (10 % steps) until the field fits
    in the confocal; fluorescent: the light-microscope image is sized around it."""
    anisotropy = float(rng.uniform(1.0, 1.25))
    rows, cols = (int(v) for v in optics["sem_side_px"])
    view = {
        "px_nm": float(optics["sem_px_nm"]),
        "size_px": [rows, cols],
        "rotation_deg": float(rng.uniform(-180.0, 180.0)),
        "scale": [float(v) for v in 1.0 + rng.uniform(-0.005, 0.005, 2)],
        "shear": float(rng.uniform(-0.005, 0.005)),
        "mirror": bool(rng.random() < 0.5),
        "tilt_deg": float(np.degrees(np.arccos(1.0 / anisotropy))),
        "tilt_axis_deg": float(rng.uniform(0.0, 180.0)),
        "databar_px": int(round(rng.uniform(0.06, 0.10) * rows)) if rng.random() < 0.5 else 0,
    }
    if "lm_room" in optics:
        view["px_nm"] = round(view["px_nm"], 4)
        _fit_confocal(optics, view)
        return view
    lm_side_um = optics["confocal_size_px"] * optics["confocal_px_nm"] / 1000.0
    room = lm_side_um - 2.0 * _EM_EDGE_MARGIN_UM - 0.1
    for _ in range(50):
        sem = _sem_view(view)
        if np.all(2.0 * _field_half_extent(sem.linear, sem.width_um, sem.height_um) <= room):
            break
        view["px_nm"] *= 0.9
    view["px_nm"] = round(view["px_nm"], 4)
    return view


def stress_params(seed: int, family: str | None = None) -> dict:
    """Bead-phantom parameters of one crowded stress case, drawn from ``seed``.

    Parameters
    ----------
    seed : int
        Seeds the recipe (stream ``[seed, 5000]``) and, through
        :func:`make_stress_case`, the phantom.
    family : {'gold', 'fluorescent'}, optional
        Default: ``STRESS_FAMILIES[seed % 2]``.

    Returns
    -------
    dict
        Overrides of :data:`clemalign.phantom.beads.DEFAULT_FIDUCIAL_PARAMS` with the
        stress options (one view), plus ``family``, ``target_pairs`` and
        ``target_candidates`` ([SEM, confocal]), which the phantom ignores.

    Notes
    -----
    The number of beads is set so that the expected number of beads visible in both
    images, ``n_beads`` x (visible SEM field area / confocal bead area) x (1 -
    missing) x (1 - 0.05 dim in the confocal), is the drawn target (15-30); the
    puncta counts so that beads + distractors + puncta detected reach the drawn
    candidate targets (200-400). Both are targets: the realised counts scatter around
    them (the SEM field is placed where beads are rich; some puncta merge).
    """
    family = _family(seed, family)
    rng = np.random.default_rng([int(seed), _RECIPE_STREAM])
    optics = _gold_optics(rng) if family == "gold" else _fluorescent_optics(rng)
    view = _view(rng, optics)
    lm_side = optics["confocal_size_px"] * optics["confocal_px_nm"] / 1000.0
    missing = round(float(rng.uniform(0.10, 0.30)), 4)
    target_pairs = int(rng.integers(15, 31))
    target_em, target_lm = (int(v) for v in rng.integers(200, 401, 2))

    sem = _sem_view(view)
    em_area = sem.width_um * sem.visible_height_um * abs(np.linalg.det(sem.linear))
    bead_margin = max(_LM_EDGE_MARGIN_UM, optics["bead_diameter_nm"] / 1000.0)
    lm_area = (lm_side - 2.0 * bead_margin) ** 2
    per_bead = em_area / lm_area * (1.0 - missing) * (1.0 - _LM_DIM_FRACTION)
    n_beads = int(np.ceil(target_pairs / per_bead))
    n_em_beads = n_beads * em_area / lm_area * (1.0 - missing)
    n_spurious_em = 4.5  # mean of DEFAULT_FIDUCIAL_PARAMS["n_spurious_em"]
    yield_em, yield_lm = _PUNCTA_YIELD[family]
    n_puncta_em = max(0, int(round((target_em - n_em_beads - n_spurious_em) / yield_em)))
    n_puncta_lm = max(0, int(round((target_lm - n_beads - 3) / yield_lm)))
    return {
        "family": family,
        "target_pairs": target_pairs,
        "target_candidates": [target_em, target_lm],
        "bead_diameter_nm": optics["bead_diameter_nm"],
        "confocal_px_nm": optics["confocal_px_nm"],
        "confocal_size_px": optics["confocal_size_px"],
        "psf_fwhm_nm": optics["psf_fwhm_nm"],
        "n_beads": n_beads,
        "min_bead_spacing_um": max(0.6, 2.0 * optics["bead_diameter_nm"] / 1000.0),
        "missing_fraction": missing,
        "n_puncta_lm": n_puncta_lm,
        "n_puncta_em": n_puncta_em,
        "views": [view],
    }


def detection_settings(params: dict) -> dict:
    """Overrides of :data:`clemalign.fiducials.DEFAULT_FIDUCIAL_SETTINGS` matching the
    phantom ``params``: bead diameter (nm) and confocal PSF FWHM (nm)."""
    p = merge_params(DEFAULT_FIDUCIAL_PARAMS, params)
    return {
        "bead_diameter_nm": float(p["bead_diameter_nm"]),
        "lm_psf_fwhm_nm": float(p["psf_fwhm_nm"]),
    }


def make_stress_case(
    seed: int, family: str | None = None, name: str | None = None
) -> tuple[SyntheticCase, dict]:
    """Generate one crowded stress case.

    Parameters
    ----------
    seed : int
        Seeds the recipe (:func:`stress_params`) and the phantom (world ``seed``,
        case index 0).
    family : {'gold', 'fluorescent'}, optional
        Default: alternate by seed parity.
    name : str, optional
        Case name (default ``stressNNNN``).

    Returns
    -------
    case : SyntheticCase
        As :func:`clemalign.phantom.beads.make_fiducial_case` (um, exact landmarks).
    params : dict
        The phantom parameters it was made with (:func:`stress_params`).
    """
    params = stress_params(seed, family)
    case = make_fiducial_case(seed, 0, params, name or f"stress{int(seed):04d}")
    return case, params


def make_crowded_case(seed: int, index: int, name: str | None = None) -> SyntheticCase:
    """A crowded gold-bead case of the default dataset (fiducial track, ``crowdNN``).

    The stress recipe of the ``gold`` family (100 nm gold, the paper's confocal at
    40 nm/px and 250 nm PSF, so the workflow's fiducial settings apply) with stress
    seed ``1000 * seed + index``: what a user's crowded bead sample looks like, shown in
    Table 1 beside the paper's cases.

    Parameters
    ----------
    seed : int
        Dataset seed (config ``seed``).
    index : int
        Case number from the name (``crowd01`` -> 0).
    name : str, optional
        Case name (default ``crowdNN``).

    Returns
    -------
    SyntheticCase
    """
    case, _ = make_stress_case(
        1000 * int(seed) + int(index), "gold", name or f"crowd{index + 1:02d}"
    )
    return case


def make_unrelated_bead_pair(
    seed: int, params: dict | None = None, index: int = 0, name: str | None = None
) -> SyntheticCase:
    """A negative control: an SEM image and a confocal image of unrelated bead fields.

    Both images are rendered by the bead phantom under the same ``params`` (so their
    candidate counts, bead size, tilt, databar... are those of a positive case), but
    from two different worlds, drawn from the streams ``[seed, 9001, 1000]``
    (confocal) and ``[seed, 9002, 1000]`` (SEM), which no integer-seeded case uses:
    nothing in one image corresponds to anything in the other.

    Parameters
    ----------
    seed : int
        Seed of the pair.
    params : dict, optional
        Phantom parameters (e.g. :func:`stress_params`); default the phantom's.
    index : int
        View of ``params["views"]`` used for the SEM image.
    name : str, optional
        Case name (default ``unrelatedNNNN``).

    Returns
    -------
    SyntheticCase
        ``em`` (SEM, ``1000 / px_nm`` px/um), ``lm`` (confocal,
        ``1000 / confocal_px_nm`` px/um), an empty ``landmarks`` table and a
        ``ground_truth`` with ``transform: None`` (there is none), ``track:
        "fiducial_negative"`` and the bead positions of each image in its own frame
        (um).
    """
    p = merge_params(DEFAULT_FIDUCIAL_PARAMS, params)
    name = name or f"unrelated{int(seed):04d}"
    em_part = _case_parts((int(seed), _NEGATIVE_EM_WORLD), int(index), p, name)
    lm_world = _world((int(seed), _NEGATIVE_LM_WORLD), p)
    visible_em = em_part.scene.inside & np.isfinite(em_part.scene.values)
    truth = {
        "case": name,
        "track": "fiducial_negative",
        "seed": int(seed),
        "index": int(index),
        "transform": None,
        "em_world": [int(seed), _NEGATIVE_EM_WORLD],
        "lm_world": [int(seed), _NEGATIVE_LM_WORLD],
        "em_px_per_um": em_part.sem.ppu,
        "lm_px_per_um": lm_world.px_per_um,
        "em_shape": list(em_part.sem.shape),
        "lm_shape": list(lm_world.lm.shape),
        "beads_em_um": em_part.scene.beads[visible_em].tolist(),
        "beads_lm_um": np.delete(
            np.asarray(lm_world.beads), np.asarray(lm_world.missing_in_lm, dtype=int), axis=0
        ).tolist(),
        "view": em_part.view,
        "bead_diameter_nm": float(p["bead_diameter_nm"]),
    }
    return SyntheticCase(
        name=name,
        em=em_part.em,
        em_px_per_um=em_part.sem.ppu,
        lm=np.array(lm_world.lm),
        lm_px_per_um=lm_world.px_per_um,
        landmarks=pd.DataFrame({c: [] for c in LANDMARK_COLUMNS}).astype(
            {c: float for c in LANDMARK_COLUMNS[1:]}
        ),
        ground_truth=truth,
    )
