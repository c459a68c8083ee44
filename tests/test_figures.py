"""clemalign.figures: no global matplotlib side effects, and figures still render."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _run_fresh(code: str, backend: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter whose matplotlib backend is ``backend``."""
    env = {**os.environ, "MPLBACKEND": backend}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_import_and_use_keep_the_users_backend(tmp_path):
    """Importing the module and drawing a figure neither switches the backend nor loads pyplot.

    The interpreter starts on the ``svg`` backend (not Agg), so the old module-level
    ``matplotlib.use("Agg")`` would show as the backend turning into ``agg``.
    """
    out = tmp_path / "errors.png"
    code = f"""
        import sys
        import matplotlib
        import pandas as pd

        assert matplotlib.rcParams["backend"] == "svg", matplotlib.rcParams["backend"]
        import clemalign.figures as figures

        assert matplotlib.rcParams["backend"] == "svg", matplotlib.rcParams["backend"]
        long = pd.DataFrame(
            {{
                "case": ["a", "a", "b", "b"],
                "source": ["raw", "sparse", "raw", "sparse"],
                "measure": ["mi", "mi", "mi", "mi"],
                "mae_um": [1.5, 0.2, 2.0, 0.3],
                "status": ["ok", "ok", "failed", "ok"],
            }}
        )
        figures.registration_errors_plot({str(out)!r}, long)
        assert matplotlib.rcParams["backend"] == "svg", matplotlib.rcParams["backend"]
        assert "matplotlib.pyplot" not in sys.modules, "figures imported pyplot"
    """
    done = _run_fresh(code, "svg")
    assert done.returncode == 0, done.stderr
    assert out.read_bytes()[:8] == PNG_SIGNATURE


def test_figures_write_png_without_pyplot(tmp_path):
    """Figure functions render small synthetic inputs to PNG (in this process)."""
    from clemalign import figures

    rng = np.random.default_rng(0)
    size = 5
    figures.dictionary_figure(
        str(tmp_path / "dictionary.png"),
        rng.normal(size=(size * size, 12)),
        rng.normal(size=(size * size, 12)),
        size,
        "toy",
    )
    tem = rng.random((24, 32))
    source_map = np.stack(
        [np.zeros((24, 32)), *np.meshgrid(np.arange(24), np.arange(32), indexing="ij")], -1
    )
    figures.analogy_figure(
        str(tmp_path / "analogy.png"), "toy", tem, tem[::-1], None, 1.0 - tem, source_map, 4.0
    )
    summary = pd.DataFrame(
        {
            "case": ["a", "b", "a", "b"],
            "source": ["raw", "raw", "sparse", "sparse"],
            "measure": ["mi", "mi", "mi", "mi"],
            "success_rate": [0.25, 1.0, 0.75, np.nan],
        }
    )
    figures.capture_range_plot(str(tmp_path / "capture.png"), summary, 0.5)
    lm_xy = rng.uniform(2, 10, (5, 2))
    residuals = pd.DataFrame(
        {
            "lm_x_um": lm_xy[:, 0],
            "lm_y_um": lm_xy[:, 1],
            "mapped_lm_x_um": lm_xy[:, 0] + 0.1,
            "mapped_lm_y_um": lm_xy[:, 1],
            "residual_um": 0.1,
            "loo_affine_residual_um": 0.2,
        }
    )
    figures.residuals_figure(str(tmp_path / "residuals.png"), tem, 2.0, residuals, "toy ok")
    figures.residuals_figure(str(tmp_path / "nothing.png"), tem, 2.0, None, "toy failed: x")
    for name in ("dictionary", "analogy", "capture", "residuals", "nothing"):
        assert (tmp_path / f"{name}.png").read_bytes()[:8] == PNG_SIGNATURE
