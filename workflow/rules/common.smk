# Case table and helpers shared by the rules. clemalign.cases needs only the standard
# library, so the workflow parses before any job or conda environment exists.
import importlib.util
import json
import os
import random
import re
import sys

from snakemake_interface_executor_plugins.settings import DeploymentMethod

SRC = os.path.join(workflow.basedir, "src")
# The conda post-deploy script (envs/) installs the package from here.
os.environ.setdefault("CLEMALIGN_ROOT", workflow.basedir)
if importlib.util.find_spec("clemalign") is None:
    if DeploymentMethod.CONDA not in workflow.deployment_settings.deployment_method:
        raise WorkflowError(
            f"clemalign is not installed in this Python ({sys.executable}). Run ./run.sh "
            "(it installs into .venv), or `pip install -e .` in this repository, or add "
            "--use-conda."
        )
    sys.path.insert(0, SRC)  # parsing needs only clemalign.cases (standard library)

from clemalign.cases import CROWDED_PREFIX, load_cases, synthetic_number
from clemalign.errors import ConfigError
from clemalign.tables import NONRIGID_SUFFIX

R = config["results"]
ENV = "../../envs/clemalign.yaml"

try:
    CASES = {case.name: case for case in load_cases(config, R)}
except ConfigError as err:
    raise WorkflowError(f"Invalid configuration: {err}") from None
for _case in CASES.values():
    validate(_case.as_dict(), "../schemas/cases.schema.yaml")
    for _role, _path in _case.as_dict().items():  # named now; the case check fails the case
        if _role in ("em", "lm", "landmarks", "em_mask", "lm_mask", "ground_truth"):
            if _path and not _case.synthetic and not os.path.exists(_path):
                print(
                    f"WARNING case {_case.name!r}: {_role} file not found ({_path}); this case "
                    "will be reported failed, the others run",
                    file=sys.stderr,
                )
_analogy = [n for n, c in CASES.items() if c.track == "analogy"]
_wanted = config["analogy"]["n_training_cases"]
if 1 < len(_analogy) <= _wanted and not config["analogy"]["allow_fewer_training_cases"]:
    raise WorkflowError(
        f"Invalid configuration: analogy.n_training_cases is {_wanted}, but each of the "
        f"{len(_analogy)} analogy cases ({', '.join(_analogy)}) has only "
        f"{len(_analogy) - 1} other case(s) to train on; add cases, lower n_training_cases, "
        "or set analogy.allow_fewer_training_cases: true"
    )

_reg = config["registration"]
_known = {
    f"{s}/{m}"
    for s in _reg["sources"]
    for m in [*_reg["measures"], *(["wssd"] if _reg["weighted_ssd"] and s.startswith("sparse") else [])]
}
_unknown = [r for r in (_reg.get("nonrigid") or {}).get("routes", []) if r not in _known]
if _unknown:
    raise WorkflowError(
        f"Invalid configuration: registration.nonrigid.routes {', '.join(_unknown)} are not "
        f"registered (registration.sources x measures gives {', '.join(sorted(_known))})"
    )


def cases_of(track, synthetic=None):
    """Names of the cases of one track (optionally only synthetic or only real), sorted:
    tables list cases by name, whatever the order of the case sheet."""
    return sorted(
        n
        for n, c in CASES.items()
        if c.track == track and (synthetic is None or c.synthetic == synthetic)
    )


def constraint(names):
    """Wildcard regex matching exactly these case names (never matches if empty)."""
    return "|".join(map(re.escape, names)) if names else "(?!x)x"


def case_files(wildcards):
    """Input files of a case: em, lm, landmarks (+ ground_truth when known)."""
    case = CASES[wildcards.case]
    files = {"em": case.em, "lm": case.lm, "landmarks": case.landmarks}
    if case.ground_truth:
        files["ground_truth"] = case.ground_truth
    return files


def existing_case_files(wildcards):
    """The case check's inputs: a case's files that exist (or that the workflow makes, for
    synthetic data), so that a missing file fails its case in the check, not the run."""
    case = CASES[wildcards.case]
    return {
        role: path
        for role, path in case_files(wildcards).items()
        if case.synthetic or os.path.exists(path)
    }


def case_check(name):
    """The case check's record (``status``: ``ok`` or ``failed: <reason>``); input
    functions that call it wait for the check (Snakemake checkpoint)."""
    with open(checkpoints.check_case.get(case=name).output[0]) as handle:
        return json.load(handle)


def usable_cases(track):
    """The cases of a track whose check passed, sorted by name."""
    return [n for n in cases_of(track) if case_check(n)["status"] == "ok"]


def failed_cases(track):
    """(name, status) of the cases of a track whose check failed."""
    return [(n, s) for n in cases_of(track) if (s := case_check(n)["status"]) != "ok"]


def check_files(track):
    """Every case check of a track: the tables list the failed cases with their reason."""
    return [f"{R}/checks/{n}.json" for n in cases_of(track)]


def mask_files(wildcards):
    """Bead masks of a fiducial case named in the case sheet (em_mask, lm_mask)."""
    case = CASES[wildcards.case]
    return {k: v for k, v in (("em_mask", case.em_mask), ("lm_mask", case.lm_mask)) if v}


def preprocessed_files(wildcards):
    """Outputs of preprocessing a case; the start transform exists for analogy cases."""
    base = f"{R}/preprocessed/{wildcards.case}"
    files = {
        "pre_em": f"{base}/em.tif",
        "pre_lm": f"{base}/lm.tif",
        "pre_landmarks": f"{base}/landmarks.csv",
        "frame": f"{base}/frame.json",
    }
    if CASES[wildcards.case].track == "analogy":
        files["start"] = f"{base}/start_transform.json"
    return files


def training_cases(case):
    """The training cases of a test case: drawn at random, seeded by the case's name, from
    the other analogy cases whose check passed (paper sec. 5.3: "two randomly selected
    image pairs"). A failed case is never drawn; the dictionaries' logs say which were left
    out."""
    others = [n for n in usable_cases("analogy") if n != case]
    if not others:
        raise WorkflowError(
            f"case {case!r}: no other analogy case passed its check ({R}/checks/), so no "
            "dictionary can be trained for it; fix the failed cases or set "
            "registration.sources: [raw]"
        )
    k = min(config["analogy"]["n_training_cases"], len(others))
    return sorted(random.Random(f"{config['seed']}:{case}").sample(others, k))


TRAINING_SEP = "+"  # case names cannot contain it (cases.schema.yaml)


def training_set(case):
    """Name of a case's training set, e.g. ``tem04+tem05``. A dictionary depends only on
    its training cases, so test cases drawing the same ones share it (and its seed)."""
    names = training_cases(case)
    if not names:
        raise WorkflowError(f"case {case}: no other analogy case to train a dictionary on")
    return TRAINING_SEP.join(names)


def training_sets():
    """The distinct training sets of the usable analogy cases, sorted (none for one)."""
    usable = usable_cases("analogy")
    if len(usable) < 2:
        return []
    return sorted({training_set(n) for n in usable})


def training_set_pattern():
    """Wildcard regex of a training set's name: analogy case names joined by '+' (which
    sets exist is known only after the case checks)."""
    one = f"(?:{constraint(cases_of('analogy'))})"
    return f"{one}(?:\\{TRAINING_SEP}{one})*"


def dictionary_file(wildcards):
    return f"{R}/analogy/dictionaries/{training_set(wildcards.case)}.npz"


def training_files(wildcards):
    """Preprocessed images and landmarks of the training cases: those of a dictionary's
    training set (wildcard ``training``) or of a test case (wildcard ``case``)."""
    if hasattr(wildcards, "training"):
        names = wildcards.training.split(TRAINING_SEP)
    else:
        names = training_set(wildcards.case).split(TRAINING_SEP)
    return {
        role: [f"{R}/preprocessed/{n}/{role}{ext}" for n in names]
        for role, ext in (("em", ".tif"), ("lm", ".tif"), ("landmarks", ".csv"))
    }


def case_record(wildcards):
    return CASES[wildcards.case].as_dict()


def registration_sources():
    """Configured sources; the predictions need training cases (two or more cases)."""
    sources = config["registration"]["sources"]
    if len(cases_of("analogy")) < 2:
        sources = [s for s in sources if s == "raw"]
    return sources


def capture_sources():
    """The registered sources that also run from perturbed starts: those of
    registration.capture_range.sources (null: all of them)."""
    wanted = config["registration"]["capture_range"].get("sources")
    return [s for s in registration_sources() if wanted is None or s in wanted]


def table2_routes():
    """(source, measure) of every Table 2 column: each source's measures, the landmark fit."""
    measures = config["registration"]["measures"]
    weighted = config["registration"]["weighted_ssd"]
    routes = [
        (s, m)
        for s in registration_sources()
        for m in measures + (["wssd"] if weighted and s.startswith("sparse") else [])
    ]
    refined = (config["registration"].get("nonrigid") or {}).get("routes", [])
    routes += [(s, f"{m}{NONRIGID_SUFFIX}") for s, m in routes if f"{s}/{m}" in refined]
    return routes + [("landmark", "fit")]


def registration_inputs(wildcards):
    """Images of one (case, source) registration, or of every configured source of a case
    (the capture range: one job per case, as its registrations take a fraction of a
    second each). A source needs only its own inputs, so the TEM itself is registered even
    when a prediction could not be made."""
    pre, ana = f"{R}/preprocessed/{wildcards.case}", f"{R}/analogy/{wildcards.case}"
    files = {
        "em": f"{pre}/em.tif",
        "lm": f"{pre}/lm.tif",
        "start": f"{pre}/start_transform.json",
    }
    source = getattr(wildcards, "source", None)
    sources = [source] if source else registration_sources()
    if "sparse" in sources or "sparse_denoised" in sources:
        files["sparse"] = f"{ana}/sparse_predicted.tif"
        files["sparse_uncertainty"] = f"{ana}/sparse_uncertainty.tif"
    if "sparse_denoised" in sources:
        files["confocal_denoised"] = f"{ana}/confocal_denoised.tif"
    if "hertzmann" in sources:
        files["hertzmann"] = f"{ana}/hertzmann_predicted.tif"
    return files


def evaluation_inputs(wildcards):
    """A case's registrations (every source) and what scores and draws them."""
    pre, ana = f"{R}/preprocessed/{wildcards.case}", f"{R}/analogy/{wildcards.case}"
    files = {role: f"{pre}/{role}{ext}" for role, ext in EVALUATION_FILES}
    sources = registration_sources()
    files["results"] = [f"{R}/registration/{wildcards.case}/{s}.json" for s in sources]
    if "sparse" in sources or "sparse_denoised" in sources:
        files["sparse"] = f"{ana}/sparse_predicted.tif"
    if "hertzmann" in sources:
        files["hertzmann"] = f"{ana}/hertzmann_predicted.tif"
    return files


def global_search_inputs(wildcards):
    """The raw images (through the case record), the TEM on the working grid and, when
    the sparse source is registered, its prediction (a second search image)."""
    files = {"em": f"{R}/preprocessed/{wildcards.case}/em.tif"}
    files |= {k: v for k, v in case_files(wildcards).items() if k in ("lm", "landmarks")}
    if "sparse" in registration_sources():
        files["sparse"] = f"{R}/analogy/{wildcards.case}/sparse_predicted.tif"
    return files


EVALUATION_FILES = (
    ("em", ".tif"),
    ("lm", ".tif"),
    ("start_transform", ".json"),
    ("landmarks", ".csv"),
    ("frame", ".json"),
)


def settings(section, keys):
    """Only these keys of a config section. A rule's params are the values it uses, so
    changing another value (e.g. ``analogy.eq7_tol``) does not rerun the rule."""
    return {key: config[section][key] for key in keys}


# The config keys each step reads (rule params; the dictionary records its own).
TRAINING_PAIRS = ("em_intensity", "training_alignment", "patch_size")
DICTIONARY = TRAINING_PAIRS + (
    "n_patches",
    "n_atoms",
    "dictionary_lambda",
    "dictionary_tol",
    "dictionary_max_iter",
)
PREDICTION = ("patch_size", "lambda", "gamma", "em_intensity", "eq7_tol", "eq7_max_iter")
REGISTRATION = settings("registration", ("measures", "weighted_ssd", "confidence"))
REGISTRATION["start_search"] = config["registration"].get("start_search")  # null: none
REGISTRATION["nonrigid"] = config["registration"].get("nonrigid")  # null: affine only
REGISTRATION["optimiser"] = settings("registration", ("levels", "bins", "ssd_contrast_um"))


def all_targets(wildcards=None):
    """Everything of a default run: every case's check; the outputs of the cases that
    passed it; the tables, which list the failed cases with their reason."""
    targets = [f"{R}/checks/{n}.json" for n in CASES]
    usable = set(usable_cases("analogy") + usable_cases("fiducial"))
    for name, case in CASES.items():
        if name not in usable:
            continue
        base = f"{R}/preprocessed/{name}"
        targets += [f"{base}/em.tif", f"{base}/lm.tif", f"{base}/landmarks.csv"]
        targets.append(f"{R}/figures/cases/{name}.png")
        targets.append(f"{R}/export/{name}")
        if case.track == "fiducial":
            targets.append(f"{R}/figures/fiducials/{name}.png")
    if cases_of("fiducial"):
        targets.append(f"{R}/tables/table1_fiducials.md")
    analogy = usable_cases("analogy")
    if len(analogy) > 1:
        targets.append(f"{R}/tables/prediction_quality.csv")
        targets += [f"{R}/figures/dictionaries/{t}.png" for t in training_sets()]
        targets += [f"{R}/analogy/{n}/confocal_denoised.tif" for n in analogy]
        targets += [f"{R}/figures/analogy/{n}.png" for n in analogy]
    if cases_of("analogy"):  # with one case only the TEM itself can be registered
        targets += [f"{R}/tables/table2_registration.md", f"{R}/figures/table2_errors.png"]
        if config["registration"].get("global_search") is not None:
            targets.append(f"{R}/tables/global_search.csv")
        if config["registration"]["capture_range"]["trials"] > 0:
            targets.append(f"{R}/tables/capture_range.csv")
    return targets


def confocal_psf_fwhm_um():
    """Lateral confocal PSF (FWHM, um): the blur of the inverted-TEM predictor in the
    prediction-quality table. ``analogy.confocal_psf_fwhm_um`` when set; else, for
    synthetic data, the phantom's own PSF; else None: the blur that best predicts the
    *other* cases' confocal images (scripts/prediction_quality.py), never the case's own."""
    value = config["analogy"].get("confocal_psf_fwhm_um")
    if value is not None or config.get("data", {}).get("source", "synthetic") != "synthetic":
        return value
    phantom = config["synthetic"]["analogy"]
    if phantom.get("model", "realistic") == "realistic":
        return phantom["realistic"]["lateral_fwhm_um"]
    return phantom["psf_fwhm_um"]


# Exports (workflow/rules/export.smk)
# config "export" with its defaults (the section is optional in the schema).
EXPORT = {
    "route": "consensus",
    "fiducial_method": "auto",
    "images": True,
    "interpolation_order": 1,
    "nonrigid": True,
} | config.get("export", {})
# The fiducial methods' transform files (rule register_fiducials).
EXPORT_FIDUCIAL_METHODS = ("algorithm1", "gaussian_baseline", "robust")


def export_result_names(wildcards):
    """What a case's answers are named by: registration sources (analogy) or methods."""
    if CASES[wildcards.case].track == "analogy":
        return registration_sources()
    return list(EXPORT_FIDUCIAL_METHODS)


def export_inputs(wildcards):
    """A case's raw images and landmarks, its frame record, and its answers' files (in
    the order of export_result_names)."""
    case = CASES[wildcards.case]
    files = {"em": case.em, "lm": case.lm, "landmarks": case.landmarks}
    files["frame"] = f"{R}/preprocessed/{wildcards.case}/frame.json"
    names = export_result_names(wildcards)
    if case.track == "analogy":
        files["results"] = [f"{R}/registration/{wildcards.case}/{s}.json" for s in names]
    else:
        files["results"] = [f"{R}/fiducials/{wildcards.case}/{m}_transform.json" for m in names]
    return files
