"""The config schema (workflow/schemas/config.schema.yaml) against config.yaml, and the conda
environment (envs/clemalign.yaml) against pyproject.toml: one place for every parameter and
every dependency, checked without running the workflow."""

from __future__ import annotations

import copy
import dataclasses
import inspect
import re
import tomllib
from pathlib import Path

import pytest
import yaml
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "config.yaml"
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"
CASES_SCHEMA = REPO / "workflow" / "schemas" / "cases.schema.yaml"
ENV = REPO / "envs" / "clemalign.yaml"
PYPROJECT = REPO / "pyproject.toml"


def load_yaml(path: Path) -> dict:
    with open(path) as handle:
        return yaml.safe_load(handle)


def repo_config() -> dict:
    return load_yaml(CONFIG)


def check(config: dict, schema: Path = SCHEMA) -> None:
    """Validate as the Snakefile does at start-up (on a copy: validate may fill defaults).

    Raises WorkflowError naming the offending key, as a run would show it."""
    validate(copy.deepcopy(config), str(schema))


def rejection(config: dict, schema: Path = SCHEMA) -> str:
    with pytest.raises(WorkflowError) as info:
        check(config, schema)
    return str(info.value)


# ------------------------------------------------------------------------- config.yaml


def test_repository_config_is_valid():
    check(repo_config())


@pytest.mark.parametrize(
    "section, key",
    [
        ((), "sede"),  # top level (seed)
        (("analogy",), "lamda"),  # a section (lambda)
        (("registration", "capture_range"), "trails"),  # a nested section (trials)
        (("synthetic", "analogy", "realistic"), "foo"),  # deep
        (("synthetic", "analogy", "realistic", "haze"), "sigma"),  # deepest
        (("fiducials", "robust"), "neighbors"),  # American spelling of neighbours
    ],
)
def test_misspelled_key_is_rejected_and_named(section, key):
    config = repo_config()
    node = config
    for name in section:
        node = node[name]
    node[key] = 2
    text = rejection(config)
    assert f"'{key}' was unexpected" in text, text[:1000]


def test_misspelled_key_in_a_list_of_objects_is_rejected():
    config = repo_config()
    config["synthetic"]["fiducial"]["views"][1]["rotaton_deg"] = 3.0
    assert "'rotaton_deg' was unexpected" in rejection(config)


def test_removed_registration_transform_is_rejected():
    """registration.transform was never read (the model is always affine): gone, not ignored."""
    config = repo_config()
    assert "transform" not in config["registration"]
    config["registration"]["transform"] = "affine"
    assert "'transform' was unexpected" in rejection(config)


@pytest.mark.parametrize("size", [14, 2, 1, 0])
def test_patch_size_must_be_odd_and_at_least_3(size):
    config = repo_config()
    config["analogy"]["patch_size"] = size
    text = rejection(config)
    assert "patch_size" in text and str(size) in text, text[:1000]


@pytest.mark.parametrize("size", [3, 5, 15, 21])
def test_odd_patch_sizes_are_accepted(size):
    config = repo_config()
    config["analogy"]["patch_size"] = size
    check(config)


@pytest.mark.parametrize(
    "path, value",
    [
        (("synthetic", "analogy", "realistic", "haze", "fraction"), 1.5),
        (("synthetic", "fiducial", "missing_fraction"), [0.1, 1.2]),
        (("synthetic", "fiducial", "missing_in_lm"), -0.1),
        (("synthetic", "analogy", "g_ratio"), [0.6, 1.0]),
        (("registration", "capture_range", "max_scale"), 1.0),
        (("registration", "sources"), []),
        (("hertzmann", "levels"), 0),
    ],
)
def test_out_of_range_value_is_rejected(path, value):
    config = repo_config()
    node = config
    for name in path[:-1]:
        node = node[name]
    node[path[-1]] = value
    text = rejection(config)
    assert path[-1] in text, text[:1000]


def test_phantom_keys_with_built_in_defaults_can_be_set():
    """Keys read by the phantoms but absent from config.yaml (their defaults live in the
    code) are declared, so setting one is not mistaken for a typo."""
    config = repo_config()
    config["synthetic"]["analogy"].update(
        axon_radius_um=[0.2, 1.0],
        g_ratio=[0.6, 0.8],
        nucleus_density_per_100um2=0.5,
        rows_per_tile=512,
        field_spacing_um=0.5,
    )
    config["synthetic"]["fiducial"].update(
        n_cases=2,
        min_bead_spacing_um=0.5,
        psf_fwhm_nm=200.0,
        missing_in_lm=0.0,
        photons=50.0,
        read_noise=1.0,
        sem_noise=0.05,
        missing_fraction=0.1,  # a scalar is used as is
        n_spurious_em=4,
    )
    config["synthetic"]["fiducial"]["views"][0]["center_um"] = [10.0, 10.0]
    check(config)


def test_phantom_defaults_are_all_declared():
    """Every key of the phantoms' and fiducial registration's built-in defaults (what the
    config overrides key by key) is a key the schema accepts."""
    from clemalign.fiducials import DEFAULT_FIDUCIAL_SETTINGS
    from clemalign.phantom.analogy import DEFAULT_ANALOGY_PARAMS
    from clemalign.phantom.beads import DEFAULT_FIDUCIAL_PARAMS

    declared = set(schema_paths(load_yaml(SCHEMA)))
    for prefix, defaults in (
        ("synthetic.analogy", DEFAULT_ANALOGY_PARAMS),
        ("synthetic.fiducial", DEFAULT_FIDUCIAL_PARAMS),
        ("fiducials", DEFAULT_FIDUCIAL_SETTINGS),
    ):
        missing = [p for p in config_paths(defaults, prefix) if p not in declared]
        assert not missing, f"not in the schema: {missing}"


def _ref(schema: dict, root: dict) -> dict:
    while "$ref" in schema:
        node = root
        for part in schema["$ref"].removeprefix("#/").split("/"):
            node = node[part]
        schema = node
    return schema


def schema_paths(schema: dict, prefix: str = "", root: dict | None = None) -> dict[str, dict]:
    """Every key path the schema declares (``a.b``; list items as ``a[]``), with its subschema.

    Follows local ``$ref`` and the alternatives of ``oneOf``/``anyOf``."""
    root = schema if root is None else root
    schema = _ref(schema, root)
    out: dict[str, dict] = {}
    for alternative in schema.get("oneOf", []) + schema.get("anyOf", []):
        out |= schema_paths(alternative, prefix, root)
    if "items" in schema:
        out |= schema_paths(schema["items"], f"{prefix}[]", root)
    for key, sub in schema.get("properties", {}).items():
        path = f"{prefix}.{key}" if prefix else key
        out[path] = _ref(sub, root)
        out |= schema_paths(sub, path, root)
    return out


def config_paths(config: object, prefix: str = "") -> list[str]:
    """Every key path of a config (``a.b``; list items as ``a[]``)."""
    out = []
    if isinstance(config, dict):
        for key, value in config.items():
            path = f"{prefix}.{key}" if prefix else key
            out += [path, *config_paths(value, path)]
    elif isinstance(config, list):
        for item in config:
            out += config_paths(item, f"{prefix}[]")
    return out


def test_every_config_key_is_declared_in_the_schema():
    declared = schema_paths(load_yaml(SCHEMA))
    missing = [p for p in config_paths(repo_config()) if p not in declared]
    assert not missing, f"in config.yaml but not in the schema: {missing}"


def _objects(schema: dict, root: dict, where: str = "$") -> list[tuple[str, dict]]:
    """Every object-typed subschema, with where it is."""
    schema = _ref(schema, root)
    found = [(where, schema)] if schema.get("type") == "object" else []
    for i, alternative in enumerate(schema.get("oneOf", []) + schema.get("anyOf", [])):
        found += _objects(alternative, root, f"{where}|{i}")
    if "items" in schema:
        found += _objects(schema["items"], root, f"{where}[]")
    for key, sub in schema.get("properties", {}).items():
        found += _objects(sub, root, f"{where}.{key}")
    return found


@pytest.mark.parametrize("path", [SCHEMA, CASES_SCHEMA], ids=lambda p: p.name)
def test_every_object_level_rejects_unknown_keys(path):
    schema = load_yaml(path)
    objects = _objects(schema, schema)
    assert len(objects) > (10 if path == SCHEMA else 0)
    open_levels = [where for where, sub in objects if sub.get("additionalProperties") is not False]
    assert not open_levels, f"additionalProperties: false missing at {open_levels}"


def test_required_keys_are_declared():
    """A ``required`` key that is not declared would make every config invalid."""
    schema = load_yaml(SCHEMA)
    for where, sub in _objects(schema, schema):
        undeclared = set(sub.get("required", [])) - set(sub.get("properties", {}))
        assert not undeclared, f"{where}: required but not declared: {undeclared}"


def test_case_record_schema_matches_the_case_fields():
    """The case schema validates ``Case.as_dict()``: exactly the dataclass's fields."""
    from dataclasses import fields

    from clemalign.cases import Case, synthetic_cases

    assert set(load_yaml(CASES_SCHEMA)["properties"]) == {f.name for f in fields(Case)}
    for case in synthetic_cases(repo_config()):
        check(case.as_dict(), CASES_SCHEMA)
    record = synthetic_cases(repo_config())[0].as_dict() | {"chanel": 1}
    assert "'chanel' was unexpected" in rejection(record, CASES_SCHEMA)


# --------------------------------------------------------------- conda environment

# PyPI name -> conda-forge name where they differ. matplotlib-base is matplotlib without
# the Qt GUI backend (the workflow only writes files).
CONDA_NAMES = {"matplotlib": "matplotlib-base"}
# Run-time dependencies the jobs' environment must not have: Snakemake runs the jobs and
# puts its own package on the script's path; a second copy in the environment could be
# another version than the one that pickled the job's ``snakemake`` object.
HOST_ONLY = {"snakemake"}
CONDA_TOOLS = {"python", "pip"}


def normalise(name: str) -> str:
    """PEP 503 normal form of a package name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def split_requirement(text: str) -> tuple[str, str]:
    """``"numpy >=1.26"`` -> ``("numpy", ">=1.26")`` (PEP 508 or conda match spec)."""
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*(.*)", text)
    assert match, text
    spec = re.sub(r"\s+", "", match.group(3).split(";")[0])
    return normalise(match.group(1)), spec


def pyproject() -> dict:
    with open(PYPROJECT, "rb") as handle:
        return tomllib.load(handle)


def runtime_requirements() -> dict[str, str]:
    """pyproject [project] dependencies, by their conda-forge name."""
    out = {}
    for text in pyproject()["project"]["dependencies"]:
        name, spec = split_requirement(text)
        if name not in HOST_ONLY:
            out[CONDA_NAMES.get(name, name)] = spec
    return out


def conda_requirements() -> dict[str, str]:
    """envs/clemalign.yaml dependencies (a nested ``pip:`` list included)."""
    out = {}
    for entry in load_yaml(ENV)["dependencies"]:
        texts = entry["pip"] if isinstance(entry, dict) else [entry]
        for text in texts:
            name, spec = split_requirement(text)
            out[name] = spec
    return out


def test_conda_environment_has_every_runtime_dependency():
    missing = set(runtime_requirements()) - set(conda_requirements())
    assert not missing, f"in pyproject.toml but not in envs/clemalign.yaml: {sorted(missing)}"


def test_conda_environment_has_nothing_undeclared():
    build = {split_requirement(t)[0] for t in pyproject()["build-system"]["requires"]}
    allowed = set(runtime_requirements()) | CONDA_TOOLS | build
    extra = set(conda_requirements()) - allowed
    assert not extra, f"in envs/clemalign.yaml but not declared by the project: {sorted(extra)}"


def test_conda_environment_pins_the_same_minimum_versions():
    conda = conda_requirements()
    differ = {
        name: (spec, conda[name])
        for name, spec in runtime_requirements().items()
        if name in conda and conda[name] != spec
    }
    assert not differ, f"pyproject.toml vs envs/clemalign.yaml: {differ}"


# ------------------------------------------- config.yaml mirrors the library defaults


def _mismatches(config: dict, defaults: dict, path: str) -> list[str]:
    """Keys present in both whose values differ (recursively; lists == tuples)."""
    out = []
    for key, value in config.items():
        if key not in defaults:
            continue
        default = defaults[key]
        if isinstance(value, dict) and isinstance(default, dict):
            out += _mismatches(value, default, f"{path}.{key}")
        elif isinstance(value, list | tuple) and isinstance(default, list | tuple):
            if [*value] != [*default]:
                out.append(f"{path}.{key}: config {value} vs library {default}")
        elif value != default:
            out.append(f"{path}.{key}: config {value} vs library {default}")
    return out


def _defaults(function) -> dict:
    return {
        name: p.default
        for name, p in inspect.signature(function).parameters.items()
        if p.default is not inspect.Parameter.empty
    }


def test_config_mirrors_the_library_defaults():
    """A notebook user calling the library without arguments gets what the workflow
    runs by default: every default is defined once in the library and config.yaml
    repeats it (this test keeps the two equal)."""
    from clemalign.confidence import ConfidenceLimits
    from clemalign.fiducials import DEFAULT_FIDUCIAL_SETTINGS
    from clemalign.hertzmann import image_analogy
    from clemalign.phantom import DEFAULT_ANALOGY_PARAMS, DEFAULT_FIDUCIAL_PARAMS
    from clemalign.preprocess import prepare_analogy_pair
    from clemalign.register import register_affine
    from clemalign.sparse_analogy import predict_confocal
    from clemalign.training import learn_joint_dictionary

    config = repo_config()
    analogy = config["analogy"]
    signatures = {
        "preprocess": (config["preprocess"], _defaults(prepare_analogy_pair)),
        "hertzmann": (config["hertzmann"], _defaults(image_analogy)),
        "registration": (config["registration"], _defaults(register_affine)),
        "analogy (eq. 7)": (
            {
                "lam": analogy["lambda"],
                "gamma": analogy["gamma"],
                "tol": analogy["eq7_tol"],
                "max_iter": analogy["eq7_max_iter"],
                "em_intensity": analogy["em_intensity"],
            },
            _defaults(predict_confocal),
        ),
        "analogy (eq. 8)": (
            {"tol": analogy["dictionary_tol"], "max_iter": analogy["dictionary_max_iter"]},
            _defaults(learn_joint_dictionary),
        ),
        "analogy (patches)": ({"patch_size": analogy["patch_size"]}, _defaults(image_analogy)),
        "registration.confidence": (
            config["registration"]["confidence"],
            dataclasses.asdict(ConfidenceLimits()),
        ),
    }
    bad = _mismatches(config["synthetic"]["analogy"], DEFAULT_ANALOGY_PARAMS, "synthetic.analogy")
    bad += _mismatches(
        config["synthetic"]["fiducial"], DEFAULT_FIDUCIAL_PARAMS, "synthetic.fiducial"
    )
    bad += _mismatches(config["fiducials"], DEFAULT_FIDUCIAL_SETTINGS, "fiducials")
    for where, (values, defaults) in signatures.items():
        bad += _mismatches(values, defaults, where)
    assert not bad, "\n".join(bad)
