"""Fiducial registration on crowded bead images (issue #14, item 5), and negative controls.

Stress cases (:func:`clemalign.phantom.crowded.make_stress_case`) imitate what users
measure on real bead images: 15-30 beads seen in both images among 200-400 bright
candidates per image (puncta, vesicles, debris), an SEM tilted up to an anisotropy of
1.25, mirrored in half of the cases, a databar in half, 10-30 % of the beads missing in
the SEM; 100 nm gold beads (SEM/confocal) or 0.2-1 um fluorescent beads (SEM/light
microscope), alternating. Negative controls
(:func:`clemalign.phantom.crowded.make_unrelated_bead_pair`) pair an SEM image and a
confocal image of unrelated bead fields: the right answer is to refuse.

Every case goes through :func:`clemalign.fiducials.register_fiducial_case` (detection
with the case's bead size and PSF, then every method it runs). Per method:

* ok: status ``ok``; success: ok and mean landmark error (at the true bead centres)
  below 0.1 um; silent failure: ok with a mean landmark error above 0.5 um;
* uncertain / failed / timeout: the status says so (a method stopped by
  ``--time-limit`` is reported as ``timeout``, not as a refusal);
* on cases with >= 12 true pairs separately, and per family;
* negative controls: the fraction ``failed`` (a refusal, right), ``uncertain``,
  ``ok`` (a transform where none exists: wrong);
* median time of detection (both images) and of each method.

Methods are those of :data:`clemalign.fiducials.METHODS` plus any other that
``register_fiducial_case`` returns. Times come from each outcome's ``seconds`` (or
``result.info["seconds"]``) when the library records them, else from wrapping, for the
duration of a case, the matcher functions (functions of ``clemalign.fiducials`` or of
any ``clemalign`` module mentioning ``FiducialResult`` whose first parameters are
``src_um, dst_um`` and that return a ``FiducialResult``; top-level calls mapped to the
outcomes in order, times left out when the counts differ) and the detection functions
(``detect_beads``, ``gaussian_centres``). The same wrapper enforces ``--time-limit``
with ``SIGALRM`` (main thread only): the matcher raises a ``FiducialError`` subclass,
so ``register_fiducial_case`` records a failure and goes on with the next method.

The old section (sheared / anisotropic views of the default phantom, success at 20 nm)
runs with ``--legacy-seeds N`` (3 views per seed).

    python benchmarks/fiducial_stress.py [--cases 60] [--negatives 10] [--jobs 1]
        [--time-limit 120] [--legacy-seeds 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import pkgutil
import signal
import sys
import time
from contextlib import contextmanager
from multiprocessing import Pool
from pathlib import Path

import numpy as np

import clemalign
import clemalign.fiducials as fid
from clemalign.metrics import landmark_errors_um
from clemalign.phantom import make_fiducial_case
from clemalign.phantom.crowded import (
    detection_settings,
    make_stress_case,
    make_unrelated_bead_pair,
    stress_params,
)

SUCCESS_UM = 0.1  # success: ok and mean landmark error below this, um
SILENT_UM = 0.5  # silent failure: ok and mean landmark error above this, um
MIN_PAIRS = 12  # the subset of cases with at least this many true pairs
NEGATIVE_SEED0 = 100_000  # negative controls use seeds from here on
LEGACY_SUCCESS_UM = 0.02  # the old section: half a confocal pixel

#: Sheared / anisotropic views of the old section (the default phantom otherwise).
LEGACY_VIEWS = [
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

_DETECTION_FUNCTIONS = ("detect_beads", "gaussian_centres")


# --------------------------------------------------------------------- instrumentation


class MatcherTimeout(fid.FiducialError):
    """A matcher ran past ``--time-limit`` (a FiducialError, so the case goes on)."""


def _matcher_modules() -> list:
    """:mod:`clemalign.fiducials` and every other ``clemalign`` module whose source
    mentions ``FiducialResult`` (where matchers live, e.g. a ``constellation`` module),
    imported."""
    package = Path(clemalign.__file__).parent
    modules = [fid]
    for info in pkgutil.iter_modules([str(package)]):
        path = package / f"{info.name}.py"
        if not info.ispkg and path.is_file() and "FiducialResult" in path.read_text():
            module = importlib.import_module(f"clemalign.{info.name}")
            if module is not fid:
                modules.append(module)
    return modules


def _is_matcher(obj: object) -> bool:
    """A function whose first parameters are ``src_um, dst_um`` and that returns a
    ``FiducialResult``."""
    if not inspect.isfunction(obj):
        return False
    sig = inspect.signature(obj)
    return list(sig.parameters)[:2] == ["src_um", "dst_um"] and "FiducialResult" in str(
        sig.return_annotation
    )


def _patch_sites() -> list[tuple[object, str, object]]:
    """(module, attribute, function) of every detection function and matcher, in the
    module defining it and in every scanned module holding it as a global (so that
    module-level imports and calls through module attributes both see the wrapper)."""
    modules = _matcher_modules()
    functions = {name: getattr(fid, name) for name in _DETECTION_FUNCTIONS}
    for module in modules:
        for name, obj in vars(module).items():
            if _is_matcher(obj) and obj.__module__ == module.__name__:
                functions[name] = obj
    sites = []
    for module in modules:
        for name, obj in vars(module).items():
            if any(obj is f for f in functions.values()):
                sites.append((module, name, obj))
    return sites


class _Probe:
    """Times detection and top-level matcher calls inside ``register_fiducial_case``."""

    def __init__(self, time_limit: float | None) -> None:
        self.time_limit = time_limit
        self.detection_s = dict.fromkeys(_DETECTION_FUNCTIONS, 0.0)
        self.calls: list[tuple[str, float, bool]] = []  # (function, seconds, timed out)
        self._depth = 0

    def _detection(self, name: str, function):
        def wrapped(*args, **kwargs):
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.detection_s[name] += time.perf_counter() - start

        return wrapped

    def _matcher(self, name: str, function):
        def wrapped(*args, **kwargs):
            if self._depth:  # nested call of one matcher by another: the outer one counts
                return function(*args, **kwargs)
            self._depth += 1
            timed_out = False
            start = time.perf_counter()
            if self.time_limit:
                signal.signal(signal.SIGALRM, _raise_timeout(self.time_limit))
                signal.setitimer(signal.ITIMER_REAL, self.time_limit)
            try:
                return function(*args, **kwargs)
            except MatcherTimeout:
                timed_out = True
                raise
            finally:
                if self.time_limit:
                    signal.setitimer(signal.ITIMER_REAL, 0.0)
                self._depth -= 1
                self.calls.append((name, time.perf_counter() - start, timed_out))

        return wrapped

    @contextmanager
    def patched(self):
        """Wrap the detection and matcher functions (:func:`_patch_sites`) meanwhile."""
        sites = _patch_sites()
        wrappers = {}
        for _, name, function in sites:
            if id(function) not in wrappers:
                wrap = self._detection if name in _DETECTION_FUNCTIONS else self._matcher
                wrappers[id(function)] = wrap(function.__name__, function)
        try:
            for module, name, function in sites:
                setattr(module, name, wrappers[id(function)])
            yield self
        finally:
            for module, name, function in sites:
                setattr(module, name, function)


def _raise_timeout(limit: float):
    def handler(signum, frame):
        raise MatcherTimeout(f"time limit of {limit:g} s exceeded")

    return handler


def _category(status: str) -> str:
    """``ok``, ``uncertain``, ``failed`` or ``timeout`` (a failure by the time limit)."""
    head = status.split(":", 1)[0].strip()
    if head == "failed" and "time limit of" in status:
        return "timeout"
    return head


def _outcome_seconds(outcome) -> float | None:
    """Seconds recorded by the library for one method, if it records them."""
    seconds = getattr(outcome, "seconds", None)
    if seconds is None and getattr(outcome, "result", None) is not None:
        seconds = outcome.result.info.get("seconds")
    return None if seconds is None else float(seconds)


# ------------------------------------------------------------------------ one case


def run_case(task: tuple) -> dict:
    """Generate one case, register it, and score every method (a JSON-ready record).

    ``task`` is ``(kind, seed, time_limit)``, kind ``stress``, ``negative`` or
    ``legacy:<view index>``.
    """
    kind, seed, time_limit = task
    start = time.perf_counter()
    if kind == "stress":
        case, params = make_stress_case(seed)
    elif kind == "negative":
        params = stress_params(seed)
        case = make_unrelated_bead_pair(seed, params)
    else:
        params = {"views": LEGACY_VIEWS}
        case = make_fiducial_case(seed, int(kind.split(":")[1]), params)
    generation_s = time.perf_counter() - start
    em_xy = case.landmarks[["em_x_um", "em_y_um"]].to_numpy(float)
    lm_xy = case.landmarks[["lm_x_um", "lm_y_um"]].to_numpy(float)

    probe = _Probe(time_limit)
    start = time.perf_counter()
    with probe.patched():
        result = fid.register_fiducial_case(
            case.em, case.em_px_per_um, case.lm, case.lm_px_per_um, detection_settings(params)
        )
    total_s = time.perf_counter() - start
    top_level = probe.calls if len(probe.calls) == len(result.outcomes) else None
    methods = {}
    for k, (method, outcome) in enumerate(result.outcomes.items()):
        entry = {"status": outcome.status, "category": _category(outcome.status)}
        seconds = _outcome_seconds(outcome)
        if seconds is None and top_level is not None:
            seconds = top_level[k][1]
        entry["seconds"] = seconds
        if outcome.matrix is not None and len(em_xy):
            entry["mae_um"] = float(np.mean(landmark_errors_um(outcome.matrix, em_xy, lm_xy)))
        methods[method] = entry

    truth = case.ground_truth
    extra = (truth.get("transform") or {}).get("extra", {})
    view = truth["view"]
    return {
        "kind": kind.split(":")[0],
        "seed": int(seed),
        "family": params.get("family", "legacy"),
        "n_pairs": len(case.landmarks),
        "candidates_em": len(result.em_beads.xy_um),
        "candidates_lm": len(result.lm_beads.xy_um),
        "bead_nm": float(truth["bead_diameter_nm"]),
        "anisotropy": extra.get("anisotropy", 1.0),
        "mirror": bool(view.get("mirror", False)),
        "databar_px": int(view.get("databar_px", 0)),
        "missing_fraction": truth.get("missing_fraction"),
        "generation_s": generation_s,
        "registration_s": total_s,
        "detection_s": probe.detection_s["detect_beads"],
        "gaussian_centres_s": probe.detection_s["gaussian_centres"],
        "methods": methods,
    }


# ------------------------------------------------------------------------ the tables


def _method_order(records: list[dict]) -> list[str]:
    """METHODS first, then any other method the cases returned, in order of appearance."""
    order = list(fid.METHODS)
    for record in records:
        order += [m for m in record["methods"] if m not in order]
    return order


def _rate(flags: list[bool]) -> str:
    return f"{np.mean(flags):6.1%}" if flags else "     -"


def _median(values: list[float], fmt: str = "{:.3g}") -> str:
    values = [v for v in values if v is not None]
    return fmt.format(float(np.median(values))) if values else "-"


def _range(values: list[int]) -> str:
    if not values:
        return "-"
    return f"{np.median(values):5.0f} ({min(values)}-{max(values)})"


def print_overview(records: list[dict]) -> None:
    """Cases, true pairs and candidates per image (median (range)), time per case."""
    print(
        f"{'cases':<26} {'n':>3} {'true pairs':>14} {'SEM candidates':>16} "
        f"{'LM candidates':>16} {'gen s':>6} {'reg s':>6}"
    )
    groups = {}
    for r in records:
        groups.setdefault(f"{r['kind']} {r['family']}", []).append(r)
    for name, rs in sorted(groups.items()):
        print(
            f"{name:<26} {len(rs):>3} {_range([r['n_pairs'] for r in rs]):>14} "
            f"{_range([r['candidates_em'] for r in rs]):>16} "
            f"{_range([r['candidates_lm'] for r in rs]):>16} "
            f"{np.median([r['generation_s'] for r in rs]):>6.1f} "
            f"{np.median([r['registration_s'] for r in rs]):>6.1f}"
        )


def print_positive(records: list[dict], methods: list[str], success_um: float) -> None:
    """Per method and subset: ok, success, silent failures, uncertain, failed, timeout."""
    subsets = {"all": records, f">={MIN_PAIRS} pairs": []}
    subsets[f">={MIN_PAIRS} pairs"] = [r for r in records if r["n_pairs"] >= MIN_PAIRS]
    for family in sorted({r["family"] for r in records}):
        if len({r["family"] for r in records}) > 1:
            subsets[family] = [r for r in records if r["family"] == family]
    print(
        f"{'method':<18} {'subset':<14} {'n':>3} {'ok':>7} {'success':>7} {'silent':>7} "
        f"{'uncert.':>7} {'failed':>7} {'timeout':>7} {'med. err um':>11}"
    )
    for method in methods:
        for label, rs in subsets.items():
            entries = [r["methods"][method] for r in rs if method in r["methods"]]
            if not entries:
                continue
            cat = [e["category"] for e in entries]
            err = [e.get("mae_um", np.inf) if e["category"] == "ok" else None for e in entries]
            print(
                f"{method:<18} {label:<14} {len(entries):>3} "
                f"{_rate([c == 'ok' for c in cat]):>7} "
                f"{_rate([e is not None and e < success_um for e in err]):>7} "
                f"{_rate([e is not None and e > SILENT_UM for e in err]):>7} "
                f"{_rate([c == 'uncertain' for c in cat]):>7} "
                f"{_rate([c == 'failed' for c in cat]):>7} "
                f"{_rate([c == 'timeout' for c in cat]):>7} "
                f"{_median([e for e in err if e is not None]):>11}"
            )


def print_negative(records: list[dict], methods: list[str]) -> None:
    """Per method on the negative controls: refused (failed), uncertain, ok (wrong)."""
    print(f"{'method':<18} {'n':>3} {'failed':>7} {'uncert.':>7} {'ok (wrong)':>10} {'timeout':>7}")
    for method in methods:
        cat = [r["methods"][method]["category"] for r in records if method in r["methods"]]
        if cat:
            print(
                f"{method:<18} {len(cat):>3} {_rate([c == 'failed' for c in cat]):>7} "
                f"{_rate([c == 'uncertain' for c in cat]):>7} "
                f"{_rate([c == 'ok' for c in cat]):>10} {_rate([c == 'timeout' for c in cat]):>7}"
            )


def print_times(records: list[dict], methods: list[str]) -> None:
    """Median (max) seconds per case of detection (``detect_beads``, both images), of the
    Gaussian centre fits (both images; only the baseline uses them) and of each method."""
    cells = []
    columns = {"detect_beads": "detection_s", "gaussian_centres": "gaussian_centres_s"}
    for label, key in columns.items():
        t = [r[key] for r in records]
        cells.append(f"{label} {_median(t, '{:.3g}')} (max {max(t):.3g})")
    for method in methods:
        t = [r["methods"][method]["seconds"] for r in records if method in r["methods"]]
        t = [v for v in t if v is not None]
        cells.append(f"{method} {_median(t, '{:.3g}')}" + (f" (max {max(t):.3g})" if t else ""))
    print("median s per case: " + ", ".join(cells))


# ------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark, print the tables; returns every case's record."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=60, help="stress cases (default 60)")
    parser.add_argument("--negatives", type=int, default=10, help="negative controls")
    parser.add_argument("--seed0", type=int, default=0, help="first stress seed")
    parser.add_argument("--legacy-seeds", type=int, default=0, help="old section: seeds x 3")
    parser.add_argument(
        "--time-limit", type=float, default=120.0, help="s per matcher call (0: none)"
    )
    parser.add_argument("--jobs", type=int, default=1, help="cases in parallel")
    parser.add_argument("--json", help="write every case's record here")
    args = parser.parse_args(argv)
    limit = args.time_limit or None
    tasks = [("stress", args.seed0 + k, limit) for k in range(args.cases)]
    tasks += [("negative", NEGATIVE_SEED0 + args.seed0 + k, limit) for k in range(args.negatives)]
    tasks += [
        (f"legacy:{v}", seed, limit)
        for seed in range(args.legacy_seeds)
        for v in range(len(LEGACY_VIEWS))
    ]
    start = time.perf_counter()
    if args.jobs > 1:
        with Pool(args.jobs) as pool:
            records = pool.map(run_case, tasks, chunksize=1)
    else:
        records = []
        for k, task in enumerate(tasks):
            records.append(run_case(task))
            r = records[-1]
            cats = " ".join(f"{m}={e['category']}" for m, e in r["methods"].items())
            print(
                f"[{k + 1}/{len(tasks)}] {r['kind']} {r['family']} seed {r['seed']}: "
                f"{r['n_pairs']} pairs, {r['candidates_em']}/{r['candidates_lm']} candidates, "
                f"{cats}",
                file=sys.stderr,
                flush=True,
            )
    wall = time.perf_counter() - start

    kinds = {k: [r for r in records if r["kind"] == k] for k in ("stress", "negative", "legacy")}
    methods = _method_order(records)
    print_overview(records)
    if kinds["stress"]:
        print(f"\nstress cases: success = ok and mean landmark error < {SUCCESS_UM} um")
        print_positive(kinds["stress"], methods, SUCCESS_UM)
        print_times(kinds["stress"], methods)
    if kinds["negative"]:
        print("\nnegative controls (unrelated images): the right answer is 'failed'")
        print_negative(kinds["negative"], methods)
        print_times(kinds["negative"], methods)
    if kinds["legacy"]:
        print(f"\nold section, sheared / anisotropic views: success < {LEGACY_SUCCESS_UM} um")
        print_positive(kinds["legacy"], methods, LEGACY_SUCCESS_UM)
        print_times(kinds["legacy"], methods)
    print(
        f"\n{len(records)} cases in {wall:.0f} s ({wall / max(len(records), 1):.1f} s per case, "
        f"{args.jobs} job(s), time limit {limit or 'none'} s per matcher)"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(records, f, indent=1)
    return {"records": records}


if __name__ == "__main__":
    main()
