"""clemalign: multi-modal registration for correlative light and electron microscopy.

Geometry convention (used by every module)
------------------------------------------
* Physical points are ``(x, y)`` in micrometres (um), ``x`` along image columns and
  ``y`` along rows, origin at the outer corner of the first pixel. The centre of pixel
  ``(row, col)`` of an image sampled at ``p`` px/um is therefore at
  ``x = (col + 0.5) / p``, ``y = (row + 0.5) / p``.
* A transform is a 3x3 homogeneous matrix in um that maps **moving** points to
  **fixed** points (``x_fixed = M @ [x_moving, y_moving, 1]``). The electron
  micrograph is the moving image, the light micrograph the fixed one.
"""

__version__ = "0.1.0"

# The public API, imported on first use (PEP 562): ``import clemalign`` stays cheap and
# standard-library only, which the Snakefile relies on while it parses (clemalign.cases).
_API = {
    # images, landmarks, transforms
    "read_image": "io",
    "write_tiff": "io",
    "read_landmarks": "io",
    "write_landmarks": "io",
    "landmark_points": "io",
    "Transform": "transforms",
    "DeformationField": "transforms",
    "fit_affine": "transforms",
    "warp_image": "transforms",
    # preprocessing (paper sec. 5.3)
    "prepare_analogy_pair": "preprocess",
    "select_channel": "preprocess",
    "resample": "preprocess",
    # image analogies with a sparse representation (paper sec. 4)
    "training_pair": "training",
    "load_training_pairs": "training",
    "align_training_pair": "training",
    "training_patches": "training",
    "learn_joint_dictionary": "training",
    "learn_dictionary": "dictionary",
    "JointDictionary": "sparse_analogy",
    "em_for_coding": "sparse_analogy",
    "predict_confocal": "sparse_analogy",
    "ConfocalPrediction": "sparse_analogy",
    "denoise_confocal": "sparse_analogy",
    "reconstruct": "sparse_analogy",
    "predict_decoupled": "sparse_analogy",
    # the original image analogies (Hertzmann et al. 2001)
    "image_analogy": "hertzmann",
    # registration and its scoring
    "register_affine": "register",
    "weights_from_uncertainty": "register",
    "register_measures": "routes",
    "global_search": "search",
    "SearchRange": "search",
    "ConfidenceLimits": "confidence",
    "assess": "confidence",
    "score": "evaluation",
    "landmark_fit": "evaluation",
    "truth_error_um": "evaluation",
    "frame_ground_truth": "evaluation",
    # fiducial registration (paper Algorithm 1)
    "register_fiducial_case": "fiducials",
    "detect_beads": "fiducials",
    "algorithm1": "fiducials",
    # the embedded default data
    "make_analogy_case": "phantom",
    "make_fiducial_case": "phantom",
    # cases and seeds
    "load_cases": "cases",
    "read_case_sheet": "cases",
    "rng_for": "seeds",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str):
    """Import a public function's module on first use."""
    if name not in _API:
        raise AttributeError(f"module 'clemalign' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{_API[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
