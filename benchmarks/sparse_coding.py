"""Sparse coding and dictionary learning: clemalign against SPAMS and scikit-learn.

Measures, in one run on deterministic synthetic data, the wall time and the quality of
the sparse-coding machinery of :mod:`clemalign.dictionary` and
:mod:`clemalign.sparse_analogy` against two peers, SPAMS (``spams-bin``) and
scikit-learn, at the paper's sizes (15x15 patches, 10000 training patches, 900 atoms,
λ = 1, γ = 0.01).

Data
----
Three synthetic TEM/confocal cases ``make_analogy_case(2012, i, {})`` (i = 0, 1, 2),
each brought to 14.52 px/um by ``prepare_analogy_pair(..., "green", 14.52, 3.0)``
(about 200x200 px in [0, 1]). Cases 0 and 1 give 10000 random paired 15x15 TEM/confocal
training patches (``training_patches``, rng seed 0): ``X_train`` of shape (450, 10000),
raw intensities. The test set is every overlapping 15x15 patch of case 2's TEM plus
evenly spaced patches of case 1's TEM up to exactly 40000 columns: (225, 40000).

Parts
-----
(a) Dictionary learning, 900 atoms, λ = 1, on ``X_train``: ``learn_dictionary`` against
    ``spams.trainDL`` (mode 2, batches of 512) and scikit-learn's
    ``MiniBatchDictionaryLearning`` (batches of 512). Every final dictionary is scored by
    the same exact objective (codes by ``lasso_lars``, then ``lasso_objective``), and the
    time at which our history first reaches SPAMS's final objective is reported.
(b) Coding the 40000 test patches against the TEM half ``D1`` (225x900) of our learned
    dictionary: ``lasso_lars`` against ``spams.lasso`` (mode 2) and scikit-learn's
    ``sparse_encode(algorithm="lasso_lars")``. scikit-learn's ``sparse_encode`` divides
    ``alpha`` by the number of features internally, so ``alpha = λ`` solves the same
    problem; a small subset is also coded with ``alpha = λ / 225`` to show, by the
    objective, that this would be a different (much weaker) regularisation.
(c) Eq. 7 on case 2's TEM image with both halves of our dictionary: ``reconstruct``
    (to optimality, iteration capped) against ``predict_decoupled``; both always run
    three times (median).
(d) The machine's matrix-multiply floor: float32 and float64 GEMM (900x225) @
    (225x40000), median of 5; part (b)'s times are also given as multiples of the
    float32 GEMM (the unavoidable ``Dᵀx`` product).

Timing uses ``time.perf_counter``. A measurement is repeated three times and the median
reported when its first run takes under 5 s; slower ones are run once (column ``runs``).
Timings exclude numba compilation: every compiled kernel is run once on a small problem
before the clock starts (``warm_up``); kernels use numba's thread count
(``NUMBA_NUM_THREADS``, default all cores), printed at the start.
The table is printed and written as CSV to ``/tmp/sparse_bench.csv``.

The peers live in the ``bench`` extra (``pip install -e .[bench]``); a missing peer is
reported and its rows are skipped.

Run it (10-20 minutes on 2 cores)::

    python benchmarks/sparse_coding.py [--our-max-iter 60] [--spams-iter 200]
        [--sklearn-max-iter 1] [--eq7-max-iter 100] [--threads 2] [--parts abcd]

``--threads`` sets SPAMS's ``numThreads`` and our numba thread count (BLAS threads follow
``OPENBLAS_NUM_THREADS``/``OMP_NUM_THREADS``; set them too for a one-thread comparison).
On a machine shared with other jobs a one-thread run compares more fairly: a busy core
stalls SPAMS's OpenMP barriers far more than our independent per-patch tasks.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from clemalign.dictionary import (
    lasso_kkt_violation,
    lasso_lars,
    lasso_objective,
    learn_dictionary,
)
from clemalign.phantom import make_analogy_case
from clemalign.preprocess import prepare_analogy_pair
from clemalign.sparse_analogy import (
    eq7_objective,
    extract_patches,
    predict_decoupled,
    reconstruct,
)
from clemalign.training import confocal_in_em_frame, training_patches

SEED = 2012
PX_PER_UM = 14.52
SIZE = 15
N_TRAIN = 10000
N_TEST = 40000
N_ATOMS = 900
LAM = 1.0
GAMMA = 0.01
FAST_S = 5.0
CSV_PATH = "/tmp/sparse_bench.csv"
COLUMNS = [
    "part",
    "method",
    "runs",
    "seconds",
    "objective/sample",
    "nnz",
    "ratio",
    "x_gemm32",
    "notes",
]


def say(msg: str) -> None:
    """Progress line on stdout, flushed at once."""
    print(msg, flush=True)


@contextlib.contextmanager
def quiet_fds():
    """Silence C-level stdout/stderr (SPAMS prints every iteration)."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 1)
        os.dup2(null, 2)
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, null):
            os.close(fd)


def timed(fn: Callable[[], Any], always: bool = False) -> tuple[Any, float, int]:
    """Run ``fn``; if it took under FAST_S seconds (or ``always``), twice more.
    (result, median s, runs)."""
    start = time.perf_counter()
    result = fn()
    times = [time.perf_counter() - start]
    if times[0] < FAST_S or always:
        for _ in range(2):
            start = time.perf_counter()
            result = fn()
            times.append(time.perf_counter() - start)
    return result, float(np.median(times)), len(times)


def import_peer(name: str):
    """Import a comparison peer lazily; None (with a message) when it is not installed."""
    try:
        if name == "spams":
            import spams

            return spams
        import sklearn.decomposition

        return sklearn.decomposition
    except ImportError as err:
        pkg = "spams-bin" if name == "spams" else "scikit-learn"
        say(
            f"!! {name} is not installed ({err}); its rows are skipped. "
            f"Install the bench extra: pip install -e .[bench]  (or pip install {pkg})"
        )
        return None


def warm_up() -> None:
    """Compile (or load from the cache) every numba kernel once, outside the timings."""
    rng = np.random.default_rng(0)
    X = rng.random((2 * 9, 300))
    learn_dictionary(X, 12, 0.1, np.random.default_rng(0), tol=1e-3, max_iter=2, batch_size=128)
    D = X[:, :20] / np.linalg.norm(X[:, :20], axis=0)
    lasso_lars(X, D, 0.1)
    img = rng.random((12, 12))
    predict_decoupled(img, D[:9], D[9:], 0.1, 3)
    reconstruct(img, D[:9], D[9:], 0.1, 0.01, 3, tol=1e-6, max_iter=3)


def build_data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """X_train (450, 10000), X_test (225, 40000), case 2's TEM image."""
    pairs = []
    for index in range(3):
        case = make_analogy_case(SEED, index, {})
        pair = prepare_analogy_pair(
            case.em,
            case.em_px_per_um,
            case.lm,
            case.lm_px_per_um,
            case.landmarks,
            "green",
            PX_PER_UM,
            3.0,
        )
        conf = confocal_in_em_frame(pair.em, pair.lm, pair.px_per_um, pair.landmarks)
        pairs.append((pair.em, conf))
    X_train = training_patches(pairs[:2], N_TRAIN, SIZE, np.random.default_rng(0))
    f1 = np.asarray(pairs[2][0], dtype=np.float64)
    own = extract_patches(f1, SIZE)
    extra = extract_patches(pairs[1][0], SIZE)
    pick = np.linspace(0, extra.shape[1] - 1, N_TEST - own.shape[1]).round().astype(int)
    X_test = np.ascontiguousarray(np.hstack([own, extra[:, pick]]))
    return X_train, X_test, f1


def exact_score(X: np.ndarray, D: np.ndarray) -> tuple[float, float]:
    """Exact objective per sample of a dictionary (codes by lasso_lars) and mean nnz."""
    A = lasso_lars(X, D, LAM)
    return lasso_objective(X, D, A, LAM), float((A != 0).sum(axis=0).mean())


def code_notes(X: np.ndarray, D: np.ndarray, A: np.ndarray) -> str:
    """KKT violation of codes, and again after dropping |a| < 1e-10 (solver round-off)."""
    kkt = lasso_kkt_violation(X, D, A, LAM)
    tiny = (A != 0) & (np.abs(A) < 1e-10)
    text = f"kkt={kkt:.1e}"
    if tiny.any():
        clean = np.where(tiny, 0.0, A)
        text += (
            f" ({int(tiny.sum())} coefs |a|<1e-10, {tiny.sum() / A.shape[1]:.3f}/code; "
            f"kkt without them {lasso_kkt_violation(X, D, clean, LAM):.1e})"
        )
    return text


def row(part, method, runs, seconds, obj=None, nnz=None, ratio=None, xg=None, notes=""):
    return {
        "part": part,
        "method": method,
        "runs": runs,
        "seconds": seconds,
        "objective/sample": obj,
        "nnz": nnz,
        "ratio": ratio,
        "x_gemm32": xg,
        "notes": notes,
    }


def part_a(X, spams, skd, args, rows) -> np.ndarray:
    """Dictionary learning; returns our dictionary."""
    say(f"(a) our learn_dictionary, max_iter={args.our_max_iter} ...")
    start = time.perf_counter()
    ours = learn_dictionary(
        X, N_ATOMS, LAM, np.random.default_rng(0), tol=1e-4, max_iter=args.our_max_iter
    )
    t_ours = time.perf_counter() - start
    obj_ours, nnz_ours = exact_score(X, ours.D)
    say(f"    {t_ours:.1f} s, {len(ours.history)} iterations, objective {obj_ours:.6f}")

    t_spams = obj_spams = None
    if spams is not None:
        say(f"(a) spams.trainDL iter={args.spams_iter} ...")
        Xf = np.asfortranarray(X)
        with quiet_fds():
            start = time.perf_counter()
            D_spams = spams.trainDL(
                Xf,
                K=N_ATOMS,
                lambda1=LAM,
                batchsize=512,
                iter=args.spams_iter,
                numThreads=args.threads,
                mode=2,
            )
            t_spams = time.perf_counter() - start
        obj_spams, nnz_spams = exact_score(X, np.asarray(D_spams))
        say(f"    {t_spams:.1f} s, objective {obj_spams:.6f}")
        rows.append(
            row(
                "a",
                "SPAMS trainDL",
                1,
                t_spams,
                obj_spams,
                nnz_spams,
                1.0,
                notes=f"iter={args.spams_iter}, batchsize=512, numThreads={args.threads}, mode=2",
            )
        )

    reached = "n/a (no SPAMS)"
    if obj_spams is not None:
        hit = [h for h in ours.history if h[2] <= obj_spams]
        reached = (
            f"reached SPAMS obj at {hit[0][4]:.1f} s (iteration {hit[0][0]})"
            if hit
            else "SPAMS obj not reached"
        )
    rows.insert(
        len(rows) - (1 if spams is not None else 0),
        row(
            "a",
            "ours learn_dictionary",
            1,
            t_ours,
            obj_ours,
            nnz_ours,
            t_ours / t_spams if t_spams else None,
            notes=(
                f"max_iter={args.our_max_iter}, ran {len(ours.history)} it, "
                f"converged={ours.converged}; {reached}"
            ),
        ),
    )

    if skd is not None:
        say(f"(a) sklearn MiniBatchDictionaryLearning max_iter={args.sklearn_max_iter} ...")
        model = skd.MiniBatchDictionaryLearning(
            n_components=N_ATOMS,
            alpha=LAM,
            batch_size=512,
            max_iter=args.sklearn_max_iter,
            random_state=0,
        )
        start = time.perf_counter()
        model.fit(X.T)
        t_sk = time.perf_counter() - start
        D_sk = model.components_.T
        norms = np.linalg.norm(D_sk, axis=0)
        obj_sk, nnz_sk = exact_score(X, D_sk)
        say(f"    {t_sk:.1f} s, objective {obj_sk:.6f}")
        rows.append(
            row(
                "a",
                "sklearn MiniBatchDL",
                1,
                t_sk,
                obj_sk,
                nnz_sk,
                t_sk / t_spams if t_spams else None,
                notes=(
                    f"max_iter={args.sklearn_max_iter} epoch(s) = {model.n_steps_} batches "
                    f"of 512; atom norms {norms.min():.4f}-{norms.max():.4f}"
                ),
            )
        )
    return ours.D


def part_b(Xt, D1, spams, skd, t_gemm32, rows, threads) -> None:
    """Coding 40000 patches against D1."""
    say("(b) ours lasso_lars ...")
    A, t_ours, n_ours = timed(lambda: lasso_lars(Xt, D1, LAM))
    obj_ours = lasso_objective(Xt, D1, A, LAM)
    kkt_ours = code_notes(Xt, D1, A)
    nnz_ours = float((A != 0).sum(axis=0).mean())
    say(f"    {t_ours:.2f} s, objective {obj_ours:.10f}, {kkt_ours}")
    entries = [("ours lasso_lars", t_ours, n_ours, obj_ours, nnz_ours, kkt_ours, "")]

    if spams is not None:
        say("(b) spams.lasso ...")
        Xf, Df = np.asfortranarray(Xt), np.asfortranarray(D1)

        def run_spams():
            with quiet_fds():
                return spams.lasso(Xf, D=Df, lambda1=LAM, mode=2, numThreads=threads)

        S, t_s, n_s = timed(run_spams)
        S = S.toarray()
        obj = lasso_objective(Xt, D1, S, LAM)
        entries.append(
            (
                "SPAMS lasso",
                t_s,
                n_s,
                obj,
                float((S != 0).sum(axis=0).mean()),
                code_notes(Xt, D1, S),
                f"mode=2, numThreads={threads}",
            )
        )
        say(f"    {t_s:.2f} s, objective {obj:.10f}")

    if skd is not None:
        say("(b) sklearn sparse_encode lasso_lars, alpha=λ (40000 patches) ...")
        C, t_k, n_k = timed(
            lambda: skd.sparse_encode(Xt.T, D1.T, algorithm="lasso_lars", alpha=LAM)
        )
        C = C.T
        obj = lasso_objective(Xt, D1, C, LAM)
        entries.append(
            (
                "sklearn sparse_encode",
                t_k,
                n_k,
                obj,
                float((C != 0).sum(axis=0).mean()),
                code_notes(Xt, D1, C),
                "algorithm=lasso_lars, alpha=λ (sklearn divides by n_features itself)",
            )
        )
        say(f"    {t_k:.2f} s, objective {obj:.10f}")

    t_ref = entries[1][1] if spams is not None else None
    for name, t, n, obj, nnz, kkt, note in entries:
        rel = abs(obj - obj_ours) / abs(obj_ours)
        rows.append(
            row(
                "b",
                name,
                n,
                t,
                obj,
                nnz,
                t / t_ref if t_ref else None,
                t / t_gemm32,
                f"{kkt}; rel. obj. diff to ours {rel:.1e}" + (f"; {note}" if note else ""),
            )
        )

    if skd is not None:
        # The brief suggested alpha = λ/225; check on a subset which scaling is right.
        sub = Xt[:, :: N_TEST // 300][:, :300]
        say("(b) check: sklearn alpha=λ vs alpha=λ/225 on a 300-patch subset ...")
        A_sub = lasso_lars(sub, D1, LAM)
        obj_ref = lasso_objective(sub, D1, A_sub, LAM)
        for label, alpha in (("λ", LAM), ("λ/225", LAM / D1.shape[0])):
            start = time.perf_counter()
            C = skd.sparse_encode(sub.T, D1.T, algorithm="lasso_lars", alpha=alpha).T
            t = time.perf_counter() - start
            obj = lasso_objective(sub, D1, C, LAM)
            rows.append(
                row(
                    "b-check",
                    f"sklearn alpha={label}",
                    1,
                    t,
                    obj,
                    float((C != 0).sum(axis=0).mean()),
                    notes=(
                        f"300-patch subset; ours on it {obj_ref:.10f}; rel. diff "
                        f"{abs(obj - obj_ref) / obj_ref:.1e}; λ-objective of sklearn's codes"
                    ),
                )
            )
            say(f"    alpha={label}: objective {obj:.10f} (ours {obj_ref:.10f})")


def part_c(f1, D1, D2, args, rows) -> None:
    """Eq. 7 to optimality against the decoupled prediction."""
    say("(c) predict_decoupled ...")
    dec, t_dec, n_dec = timed(lambda: predict_decoupled(f1, D1, D2, LAM, SIZE), always=True)
    obj_dec = eq7_objective(f1, f1, dec.u2, dec.codes, D1, D2, LAM, GAMMA, SIZE)
    rows.append(
        row(
            "c",
            "decoupled",
            n_dec,
            t_dec,
            obj_dec,
            dec.info["nnz"],
            1.0,
            notes="eq.7 objective at u1=f1, u2=averaged D2 codes",
        )
    )
    say(f"    {t_dec:.1f} s")
    say(f"(c) reconstruct (eq. 7), tol=1e-6, max_iter={args.eq7_max_iter} ...")
    rec, t_rec, n_rec = timed(
        lambda: reconstruct(f1, D1, D2, LAM, GAMMA, SIZE, tol=1e-6, max_iter=args.eq7_max_iter),
        always=True,
    )
    hist = rec.info["objective"]
    last = abs(hist[-2] - hist[-1]) / abs(hist[-1]) if len(hist) > 1 else float("nan")
    capped = rec.info["iterations"] >= args.eq7_max_iter and not last <= 1e-6
    rows.append(
        row(
            "c",
            "eq.7 reconstruct",
            n_rec,
            t_rec,
            hist[-1],
            rec.info["nnz"],
            t_rec / t_dec,
            notes=(
                f"{rec.info['iterations']} it ({rec.info['full_steps']} full)"
                f"{' (CAPPED at max_iter)' if capped else ''}, "
                f"kkt={rec.info['kkt']:.1e}, last rel. obj. change {last:.1e} (tol 1e-6)"
            ),
        )
    )
    say(f"    {t_rec:.1f} s, {rec.info['iterations']} iterations, kkt {rec.info['kkt']:.1e}")


def part_d(rows) -> float:
    """GEMM floor; returns the float32 time."""
    rng = np.random.default_rng(0)
    m, k, n = N_ATOMS, SIZE * SIZE, N_TEST
    flops = 2.0 * m * k * n
    out = {}
    for dtype in (np.float32, np.float64):
        a = rng.random((m, k)).astype(dtype)
        b = rng.random((k, n)).astype(dtype)
        a @ b  # warm-up
        times = []
        for _ in range(5):
            start = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - start)
        t = float(np.median(times))
        out[dtype] = t
        rows.append(
            row(
                "d",
                f"GEMM {np.dtype(dtype).name}",
                5,
                t,
                ratio=t / out[np.float32],
                xg=t / out[np.float32],
                notes=f"({m}x{k})@({k}x{n}), {flops / t / 1e9:.1f} GFLOP/s",
            )
        )
        say(f"(d) GEMM {np.dtype(dtype).name}: {t * 1e3:.1f} ms, {flops / t / 1e9:.1f} GFLOP/s")
    return out[np.float32]


def fmt(value, key: str) -> str:
    if value is None:
        return "-"
    if key == "seconds":
        return f"{value:.3f}"
    if key == "objective/sample":
        return f"{value:.8f}"
    if key == "nnz":
        return f"{value:.3f}"
    if key in ("ratio", "x_gemm32"):
        return f"{value:.2f}"
    return str(value)


def print_table(rows: list[dict]) -> None:
    cells = [[fmt(r[c], c) for c in COLUMNS] for r in rows]
    widths = [max(len(c), *(len(line[i]) for line in cells)) for i, c in enumerate(COLUMNS)]
    left = {"part", "method", "notes"}

    def line(values):
        return "  ".join(
            v.ljust(w) if c in left else v.rjust(w)
            for v, w, c in zip(values, widths, COLUMNS, strict=True)
        ).rstrip()

    print(line(COLUMNS))
    print(line(["-" * w for w in widths]))
    for c in cells:
        print(line(c))
    print(
        "ratio: method time / SPAMS time in (a) and (b), / decoupled time in (c), "
        "/ float32 GEMM in (d); x_gemm32: time / one float32 (900x225)@(225x40000) GEMM."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--our-max-iter", type=int, default=60)
    parser.add_argument("--spams-iter", type=int, default=200)
    parser.add_argument("--sklearn-max-iter", type=int, default=1)
    parser.add_argument("--eq7-max-iter", type=int, default=100)
    parser.add_argument(
        "--parts",
        default="abcd",
        help="parts to run (e.g. 'cd'); without 'a' only our dictionary is learned, untimed",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=2,
        help="threads of SPAMS (numThreads) and of our numba kernels (set_num_threads)",
    )
    args = parser.parse_args()

    wall = time.perf_counter()
    import numba

    numba.set_num_threads(args.threads)
    say(f"numba threads: {numba.get_num_threads()}; warming up the compiled kernels ...")
    warm_up()
    spams = import_peer("spams")
    skd = import_peer("sklearn")
    say("building data ...")
    X_train, X_test, f1 = build_data()
    say(f"    X_train {X_train.shape}, X_test {X_test.shape}, image {f1.shape}")
    rows: list[dict] = []
    d_rows: list[dict] = []
    t_gemm32 = part_d(d_rows)
    if "a" in args.parts:
        D = part_a(X_train, spams, skd, args, rows)
    else:
        say("learning our dictionary (part a not requested: untimed) ...")
        D = learn_dictionary(
            X_train, N_ATOMS, LAM, np.random.default_rng(0), tol=1e-4, max_iter=args.our_max_iter
        ).D
    m = SIZE * SIZE
    D1, D2 = np.ascontiguousarray(D[:m]), np.ascontiguousarray(D[m:])
    if "b" in args.parts:
        part_b(X_test, D1, spams, skd, t_gemm32, rows, args.threads)
    if "c" in args.parts:
        part_c(f1, D1, D2, args, rows)
    if "d" in args.parts:
        rows.extend(d_rows)

    print()
    print_table(rows)
    with open(CSV_PATH, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        writer.writeheader()
        for r in rows:
            writer.writerow({c: ("" if r[c] is None else r[c]) for c in COLUMNS})
    print(f"\ntable written to {CSV_PATH}; whole run {time.perf_counter() - wall:.0f} s")


if __name__ == "__main__":
    main()
