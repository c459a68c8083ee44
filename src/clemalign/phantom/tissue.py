"""Synthetic TEM/confocal pairs of mouse-brain tissue with a known affine between them.

The tissue is drawn once, as geometric objects in micrometres (the TEM frame), and
rendered twice:

* **TEM** (moving image, 8-bit grey, ``tem_px_per_um``): dark myelin sheaths with light
  axoplasm, nuclei with envelope and heterochromatin clumps, mitochondria with cristae,
  dark lipofuscin granules with lipid inclusions, unmyelinated processes and membrane
  texture of the neuropil, uneven illumination and noise. Rendered in row strips, so
  the paper's 582.24 px/um fits in memory.
* **Confocal** (fixed image, 8-bit RGB, ``confocal_px_per_um``, a field several times
  larger): green = myelin stain (per-axon staining efficiency, saturating, plus axons
  outside the thin TEM section and lipofuscin bleed-through), blue = DAPI (strongest on
  heterochromatin), red = lipofuscin autofluorescence; Gaussian PSF, chromatic offsets
  of red and blue, Poisson-Gaussian noise.

The relation between the modalities is therefore non-linear (saturation, inversion),
and partly non-functional: mitochondria, membranes and unmyelinated processes exist only
in TEM; out-of-section myelin only in confocal; lipofuscin is dark in TEM yet bright in
red and faintly in green, like myelin.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import ndimage

from ..io import LANDMARK_COLUMNS
from ..transforms import Transform, affine_matrix, apply
from ._common import (
    SyntheticCase,
    ValueNoise,
    block_mean,
    coverage,
    ellipse_distance,
    merge_params,
    poisson_gaussian,
    to_uint8,
)

#: Parameters of the TEM/confocal phantom; config.yaml overrides any of them.
DEFAULT_ANALOGY_PARAMS: dict = {
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
    "psf_fwhm_um": 0.25,  # lateral confocal resolution
    "channel_offset_um": 0.1,  # red and blue offsets from green (chromatic aberration)
    "photons": {"red": 12.0, "green": 40.0, "blue": 18.0},  # mean photons at signal 1
    "read_noise": 2.0,  # grey levels
    "tem_noise": 0.05,  # Gaussian noise of the TEM in [0, 1] units
    "axon_radius_um": [0.15, 1.1],  # axon (inner) radius range, log-uniform
    "g_ratio": [0.65, 0.82],  # inner/outer radius of myelinated axons
    "nucleus_density_per_100um2": 0.6,
    "rows_per_tile": 1024,  # TEM rendering strip height (memory bound)
}


# --------------------------------------------------------------------------- tissue


@dataclass
class _Objects:
    """Arrays of one kind of object (all lengths in um, tissue = TEM frame)."""

    cx: np.ndarray
    cy: np.ndarray
    a: np.ndarray
    b: np.ndarray
    angle: np.ndarray
    wobble: np.ndarray  # (n, K, 2)

    def bbox(self, i: int, pad: float = 0.0) -> tuple[float, float, float, float]:
        r = max(self.a[i], self.b[i]) * 1.35 + pad
        return (self.cx[i] - r, self.cy[i] - r, self.cx[i] + r, self.cy[i] + r)

    def __len__(self) -> int:
        return len(self.cx)


def _wobbles(rng: np.random.Generator, n: int, amp: float, k: int = 4) -> np.ndarray:
    amps = rng.uniform(0, amp, size=(n, k)) / np.arange(1, k + 1)
    phases = rng.uniform(0, 2 * np.pi, size=(n, k))
    return np.stack([amps, phases], axis=-1)


class _Grid:
    """Bucketed discs for fast non-overlap tests while placing objects."""

    def __init__(self, bounds: tuple[float, float, float, float], cell: float) -> None:
        self.x0, self.y0 = bounds[0], bounds[1]
        self.cell = cell
        self.buckets: dict[tuple[int, int], list[tuple[float, float, float]]] = {}

    def _key(self, x: float, y: float) -> tuple[int, int]:
        return int((x - self.x0) // self.cell), int((y - self.y0) // self.cell)

    def free(self, x: float, y: float, r: float, gap: float) -> bool:
        kx, ky = self._key(x, y)
        reach = int(np.ceil((r + gap) / self.cell)) + 1
        for i in range(kx - reach, kx + reach + 1):
            for j in range(ky - reach, ky + reach + 1):
                for ox, oy, orad in self.buckets.get((i, j), ()):
                    if (x - ox) ** 2 + (y - oy) ** 2 < (r + orad + gap) ** 2:
                        return False
        return True

    def add(self, x: float, y: float, r: float) -> None:
        self.buckets.setdefault(self._key(x, y), []).append((x, y, r))


@dataclass
class Tissue:
    """Geometric description of a tissue section (TEM frame, um)."""

    bounds: tuple[float, float, float, float]
    axons: _Objects
    g_ratio: np.ndarray
    stain: np.ndarray  # confocal staining efficiency per axon
    in_section: np.ndarray  # False: out of the TEM section, seen only by confocal
    nuclei: _Objects
    clumps: list[np.ndarray]  # per nucleus (m, 3): x, y, r of heterochromatin clumps
    mito: _Objects
    lipo: _Objects  # sub-discs of lipofuscin granules
    lipo_droplet: np.ndarray  # sub-disc is a light lipid droplet (TEM only)
    lipo_granule: np.ndarray  # granule id of each sub-disc
    processes: _Objects  # unmyelinated processes
    noise: dict[str, ValueNoise]


def _make_tissue(
    rng: np.random.Generator,
    bounds: tuple[float, float, float, float],
    tem_box: tuple[float, float, float, float],
    p: dict,
) -> Tissue:
    x0, y0, x1, y1 = bounds
    area = (x1 - x0) * (y1 - y0)
    grid = _Grid(bounds, 1.0)
    noise = {
        "tract": ValueNoise(rng, bounds, (10.0, 5.0), (0.7, 0.3)),
        "neuropil": ValueNoise(rng, bounds, (0.4, 0.15, 0.06, 0.025)),
        "membrane": ValueNoise(rng, bounds, (0.5, 0.25), (0.6, 0.4)),
        "fine": ValueNoise(rng, bounds, (0.05, 0.02)),
        "chromatin": ValueNoise(rng, bounds, (0.5, 0.2), (0.6, 0.4)),
        "myelin_bg": ValueNoise(rng, bounds, (3.0, 1.0)),
    }

    # Nuclei: one guaranteed inside the TEM field, the rest anywhere.
    n_nuc = max(1, rng.poisson(p["nucleus_density_per_100um2"] * area / 100.0))
    nuc = []
    tx0, ty0, tx1, ty1 = tem_box
    while len(nuc) < n_nuc:
        r = rng.uniform(1.9, 3.2)
        if not nuc and min(tx1 - tx0, ty1 - ty0) > 2 * (r + 1.5):
            c = rng.uniform((tx0 + r + 1.0, ty0 + r + 1.0), (tx1 - r - 1.0, ty1 - r - 1.0))
        else:
            c = rng.uniform((x0, y0), (x1, y1))
        if grid.free(c[0], c[1], r * 1.15, 1.0):
            grid.add(c[0], c[1], r * 1.15)
            nuc.append((c[0], c[1], r))
    nuc = np.array(nuc)
    aspect = rng.uniform(1.0, 1.3, len(nuc))
    nuclei = _Objects(
        nuc[:, 0],
        nuc[:, 1],
        nuc[:, 2] * np.sqrt(aspect),
        nuc[:, 2] / np.sqrt(aspect),
        rng.uniform(0, np.pi, len(nuc)),
        _wobbles(rng, len(nuc), 0.05),
    )
    clumps = []
    for i in range(len(nuclei)):
        m = rng.integers(12, 24)
        ang = rng.uniform(0, 2 * np.pi, m)
        rad = np.where(rng.random(m) < 0.7, rng.uniform(0.7, 0.9, m), rng.uniform(0.0, 0.6, m))
        a, b, t = nuclei.a[i], nuclei.b[i], nuclei.angle[i]
        u, v = rad * a * np.cos(ang), rad * b * np.sin(ang)
        cx = nuclei.cx[i] + np.cos(t) * u - np.sin(t) * v
        cy = nuclei.cy[i] + np.sin(t) * u + np.cos(t) * v
        clumps.append(np.stack([cx, cy, rng.uniform(0.1, 0.3, m)], axis=1))

    # Lipofuscin granules: perinuclear and scattered, each a cluster of sub-discs.
    centres = []
    for i in range(len(nuclei)):
        for _ in range(rng.integers(1, 4)):
            ang = rng.uniform(0, 2 * np.pi)
            d = max(nuclei.a[i], nuclei.b[i]) + rng.uniform(0.6, 1.4)
            centres.append((nuclei.cx[i] + d * np.cos(ang), nuclei.cy[i] + d * np.sin(ang)))
    for _ in range(rng.poisson(area / 90.0)):
        centres.append(tuple(rng.uniform((x0, y0), (x1, y1))))
    sub, droplet, gid = [], [], []
    for k, (cx, cy) in enumerate(centres):
        if not grid.free(cx, cy, 0.55, 0.1):
            continue
        grid.add(cx, cy, 0.55)
        for j in range(rng.integers(2, 6)):
            off = rng.normal(0, 0.18, 2) if j else np.zeros(2)
            sub.append((cx + off[0], cy + off[1], rng.uniform(0.12, 0.3)))
            droplet.append(j > 0 and rng.random() < 0.35)
            gid.append(k)
    sub = np.array(sub).reshape(-1, 3)
    lipo = _Objects(
        sub[:, 0],
        sub[:, 1],
        sub[:, 2],
        sub[:, 2] * rng.uniform(0.8, 1.0, len(sub)),
        rng.uniform(0, np.pi, len(sub)),
        _wobbles(rng, len(sub), 0.08),
    )

    # Myelinated axons: dense in tracts (a smooth density field), sparse elsewhere.
    rmin, rmax = p["axon_radius_um"]
    gmin, gmax = p["g_ratio"]
    ax = []
    target = int(area * 1.6)
    for _ in range(target * 6):
        if len(ax) >= target:
            break
        c = rng.uniform((x0, y0), (x1, y1))
        dens = float(noise["tract"](np.array([c[0]]), np.array([c[1]]))[0])
        if rng.random() > np.clip((dens - 0.38) * 4.0, 0.04, 1.0):
            continue
        r_in = np.exp(rng.uniform(np.log(rmin), np.log(rmax)))
        g = rng.uniform(gmin, gmax)
        r_out = r_in / g
        if grid.free(c[0], c[1], r_out * 1.1, 0.04):
            grid.add(c[0], c[1], r_out * 1.1)
            ax.append((c[0], c[1], r_out, g, True))
    # Out-of-section myelin: same density field, may overlap the in-section objects.
    for _ in range(int(len(ax) * 0.25)):
        c = rng.uniform((x0, y0), (x1, y1))
        r_out = np.exp(rng.uniform(np.log(rmin), np.log(rmax))) / rng.uniform(gmin, gmax)
        ax.append((c[0], c[1], r_out, rng.uniform(gmin, gmax), False))
    ax = np.array(ax, dtype=float).reshape(-1, 5)
    asp = rng.uniform(1.0, 1.35, len(ax))
    axons = _Objects(
        ax[:, 0],
        ax[:, 1],
        ax[:, 2] * np.sqrt(asp),
        ax[:, 2] / np.sqrt(asp),
        rng.uniform(0, np.pi, len(ax)),
        _wobbles(rng, len(ax), 0.06),
    )
    in_section = ax[:, 4].astype(bool)
    stain = np.where(in_section, rng.uniform(0.55, 1.0, len(ax)), rng.uniform(0.2, 0.55, len(ax)))

    # Mitochondria and unmyelinated processes fill the neuropil (TEM only).
    mito, proc = [], []
    for _ in range(int(area * 0.9)):
        c = rng.uniform((x0, y0), (x1, y1))
        a = rng.uniform(0.22, 0.55)
        if grid.free(c[0], c[1], a, 0.03):
            grid.add(c[0], c[1], a)
            mito.append((c[0], c[1], a, rng.uniform(0.09, 0.16)))
    for _ in range(int(area * 3.0)):
        c = rng.uniform((x0, y0), (x1, y1))
        r = rng.uniform(0.06, 0.22)
        if grid.free(c[0], c[1], r, 0.02):
            grid.add(c[0], c[1], r)
            proc.append((c[0], c[1], r))
    mito = np.array(mito).reshape(-1, 4)
    mitos = _Objects(
        mito[:, 0],
        mito[:, 1],
        mito[:, 2],
        mito[:, 3],
        rng.uniform(0, np.pi, len(mito)),
        _wobbles(rng, len(mito), 0.05),
    )
    proc = np.array(proc).reshape(-1, 3)
    procs = _Objects(
        proc[:, 0],
        proc[:, 1],
        proc[:, 2],
        proc[:, 2] * rng.uniform(0.75, 1, len(proc)),
        rng.uniform(0, np.pi, len(proc)),
        _wobbles(rng, len(proc), 0.1),
    )
    return Tissue(
        bounds,
        axons,
        ax[:, 3],
        stain,
        in_section,
        nuclei,
        clumps,
        mitos,
        lipo,
        np.array(droplet, dtype=bool),
        np.array(gid, dtype=int),
        procs,
        noise,
    )


# ------------------------------------------------------------------------ rendering


class _Frame:
    """A pixel grid (or a strip of one) and its mapping into tissue um."""

    def __init__(
        self, shape: tuple[int, int], px_per_um: float, to_tissue: np.ndarray, row0: int = 0
    ) -> None:
        self.shape = shape
        self.ppu = px_per_um
        self.m = to_tissue
        self.inv = np.linalg.inv(to_tissue)
        self.row0 = row0

    def block(self, rows: slice, cols: slice) -> tuple[np.ndarray, np.ndarray]:
        r = (np.arange(rows.start, rows.stop) + self.row0 + 0.5) / self.ppu
        c = (np.arange(cols.start, cols.stop) + 0.5) / self.ppu
        x, y = np.meshgrid(c, r)
        xt = self.m[0, 0] * x + self.m[0, 1] * y + self.m[0, 2]
        yt = self.m[1, 0] * x + self.m[1, 1] * y + self.m[1, 2]
        return xt, yt

    def window(self, bbox: tuple[float, float, float, float]) -> tuple[slice, slice] | None:
        """Pixel window (local rows, cols) covering a tissue bounding box, or None."""
        bx0, by0, bx1, by1 = bbox
        corners = apply(self.inv, np.array([[bx0, by0], [bx1, by0], [bx0, by1], [bx1, by1]]))
        cmin = int(np.floor(corners[:, 0].min() * self.ppu))
        cmax = int(np.ceil(corners[:, 0].max() * self.ppu)) + 1
        rmin = int(np.floor(corners[:, 1].min() * self.ppu)) - self.row0
        rmax = int(np.ceil(corners[:, 1].max() * self.ppu)) + 1 - self.row0
        rmin, rmax = max(rmin, 0), min(rmax, self.shape[0])
        cmin, cmax = max(cmin, 0), min(cmax, self.shape[1])
        if rmin >= rmax or cmin >= cmax:
            return None
        return slice(rmin, rmax), slice(cmin, cmax)

    @property
    def pixel_um(self) -> float:
        return float(np.sqrt(abs(np.linalg.det(self.m[:2, :2])))) / self.ppu


def _objects_in(frame: _Frame, objs: _Objects, pad: float = 0.0):
    for i in range(len(objs)):
        win = frame.window(objs.bbox(i, pad))
        if win is not None:
            xt, yt = frame.block(*win)
            yield i, win, xt, yt


def _paint(
    canvas: np.ndarray, win: tuple[slice, slice], alpha: np.ndarray, value: np.ndarray | float
) -> None:
    sub = canvas[win]
    sub += alpha * (value - sub)


def _render_tem_strip(t: Tissue, frame: _Frame) -> np.ndarray:
    full = (slice(0, frame.shape[0]), slice(0, frame.shape[1]))
    xt, yt = frame.block(*full)
    pix = frame.pixel_um
    nz = t.noise
    img = 0.64 + 0.22 * (nz["neuropil"](xt, yt) - 0.5)
    memb = nz["membrane"](xt, yt) - 0.5
    img -= 0.22 * np.exp(-((memb / 0.018) ** 2))
    img += 0.10 * (nz["fine"](xt, yt) - 0.5)

    for i, win, x, y in _objects_in(frame, t.processes):
        d, _ = ellipse_distance(
            x,
            y,
            (t.processes.cx[i], t.processes.cy[i]),
            (t.processes.a[i], t.processes.b[i]),
            t.processes.angle[i],
            t.processes.wobble[i],
        )
        _paint(img, win, coverage(d, pix), 0.33)
        _paint(img, win, coverage(d + 0.012, pix), 0.74 + 0.05 * (nz["fine"](x, y) - 0.5))
    for i, win, x, y in _objects_in(frame, t.mito):
        ang = t.mito.angle[i]
        d, _ = ellipse_distance(
            x, y, (t.mito.cx[i], t.mito.cy[i]), (t.mito.a[i], t.mito.b[i]), ang, t.mito.wobble[i]
        )
        u = np.cos(ang) * (x - t.mito.cx[i]) + np.sin(ang) * (y - t.mito.cy[i])
        cristae = 0.44 + 0.12 * np.cos(2 * np.pi * u / 0.07)
        _paint(img, win, coverage(d, pix), 0.24)
        _paint(img, win, coverage(d + 0.015, pix), cristae)
    for i, win, x, y in _objects_in(frame, t.nuclei):
        n = t.nuclei
        d, rho = ellipse_distance(
            x, y, (n.cx[i], n.cy[i]), (n.a[i], n.b[i]), n.angle[i], n.wobble[i]
        )
        chrom = nz["chromatin"](x, y)
        hetero = np.clip((rho - 0.86) / 0.06, 0, 1) * (chrom > 0.42)
        for cx, cy, r in t.clumps[i]:
            hetero = np.maximum(hetero, coverage(np.hypot(x - cx, y - cy) - r * (0.7 + chrom), pix))
        inner = 0.6 + 0.12 * (nz["fine"](x, y) - 0.5) - 0.34 * hetero
        _paint(img, win, coverage(d, pix), 0.3)
        _paint(img, win, coverage(d + 0.035, pix), inner)
    for i, win, x, y in _objects_in(frame, t.axons):
        if not t.in_section[i]:
            continue
        ax = t.axons
        d, rho = ellipse_distance(
            x, y, (ax.cx[i], ax.cy[i]), (ax.a[i], ax.b[i]), ax.angle[i], ax.wobble[i]
        )
        g = t.g_ratio[i]
        sheath = 0.12 + 0.06 * (nz["fine"](x, y) - 0.5)
        _paint(img, win, coverage(d, pix), sheath)
        d_in = (rho - g) * min(ax.a[i], ax.b[i])
        axo = 0.77 + 0.07 * (nz["neuropil"](x, y) - 0.5)
        _paint(img, win, coverage(d_in, pix), axo)
    for i, win, x, y in _objects_in(frame, t.lipo):
        lp = t.lipo
        d, _ = ellipse_distance(
            x, y, (lp.cx[i], lp.cy[i]), (lp.a[i], lp.b[i]), lp.angle[i], lp.wobble[i]
        )
        _paint(img, win, coverage(d, pix), 0.6 if t.lipo_droplet[i] else 0.15)
    return img


def _render_tem(
    t: Tissue, shape: tuple[int, int], ppu: float, rng: np.random.Generator, p: dict
) -> np.ndarray:
    out = np.empty(shape, dtype=np.uint8)
    tilt = rng.normal(0, 1, 2)
    tilt = 0.08 * tilt / np.linalg.norm(tilt)
    blur_px = 0.008 * ppu  # ~8 nm imaging blur
    halo = max(2, int(np.ceil(3 * blur_px)))
    rows = int(p["rows_per_tile"])
    for r0 in range(0, shape[0], rows):
        r1 = min(shape[0], r0 + rows)
        a0, a1 = max(0, r0 - halo), min(shape[0], r1 + halo)
        frame = _Frame((a1 - a0, shape[1]), ppu, np.eye(3), row0=a0)
        strip = _render_tem_strip(t, frame)
        strip = ndimage.gaussian_filter(strip, blur_px)[r0 - a0 : r0 - a0 + (r1 - r0)]
        yy = (np.arange(r0, r1) + 0.5)[:, None] / shape[0] - 0.5
        xx = (np.arange(shape[1]) + 0.5)[None, :] / shape[1] - 0.5
        strip = strip * (1.0 + tilt[0] * xx + tilt[1] * yy)
        strip += rng.normal(0, p["tem_noise"], strip.shape).astype(np.float32)
        out[r0:r1] = to_uint8(strip)
    return out


def _render_confocal(
    t: Tissue,
    shape: tuple[int, int],
    ppu: float,
    to_tissue: np.ndarray,
    rng: np.random.Generator,
    p: dict,
) -> np.ndarray:
    sup = 3
    fshape = (shape[0] * sup, shape[1] * sup)
    frame = _Frame(fshape, ppu * sup, to_tissue)
    pix = frame.pixel_um
    xt, yt = frame.block(slice(0, fshape[0]), slice(0, fshape[1]))
    nz = t.noise
    myelin = np.zeros(fshape, np.float32)
    dapi = np.zeros(fshape, np.float32)
    lipo = np.zeros(fshape, np.float32)
    nucleus = np.zeros(fshape, np.float32)
    for i, win, x, y in _objects_in(frame, t.axons):
        ax = t.axons
        d, rho = ellipse_distance(
            x, y, (ax.cx[i], ax.cy[i]), (ax.a[i], ax.b[i]), ax.angle[i], ax.wobble[i]
        )
        d_in = (rho - t.g_ratio[i]) * min(ax.a[i], ax.b[i])
        ring = coverage(d, pix) * (1 - coverage(d_in, pix))
        myelin[win] += t.stain[i] * ring
    for i, win, x, y in _objects_in(frame, t.nuclei):
        n = t.nuclei
        d, rho = ellipse_distance(
            x, y, (n.cx[i], n.cy[i]), (n.a[i], n.b[i]), n.angle[i], n.wobble[i]
        )
        cov = coverage(d, pix)
        chrom = nz["chromatin"](x, y)
        hetero = np.clip((rho - 0.86) / 0.06, 0, 1) * (chrom > 0.42)
        for cx, cy, r in t.clumps[i]:
            hetero = np.maximum(hetero, coverage(np.hypot(x - cx, y - cy) - r * (0.7 + chrom), pix))
        nucleus[win] = np.maximum(nucleus[win], cov)
        dapi[win] += cov * (0.3 + 0.7 * hetero)
    for i, win, x, y in _objects_in(frame, t.lipo):
        lp = t.lipo
        d, _ = ellipse_distance(
            x, y, (lp.cx[i], lp.cy[i]), (lp.a[i], lp.b[i]), lp.angle[i], lp.wobble[i]
        )
        lipo[win] = np.maximum(lipo[win], coverage(d, pix))
    # Stain saturation (non-linear), nuclei exclude the myelin stain.
    green = (1.0 - np.exp(-1.8 * myelin)) * (1.0 - nucleus)
    green += 0.07 + 0.06 * nz["myelin_bg"](xt, yt) + 0.35 * lipo
    red = 0.04 + 1.0 * lipo
    blue = np.clip(dapi, 0, 1) + 0.02
    sigma = p["psf_fwhm_um"] / 2.3548 * ppu * sup
    offset_px = p["channel_offset_um"] * ppu * sup
    channels = {}
    for name, chan in (("red", red), ("green", green), ("blue", blue)):
        chan = ndimage.gaussian_filter(chan.astype(np.float32), sigma)
        if name != "green" and offset_px > 0:
            ang = rng.uniform(0, 2 * np.pi)
            chan = ndimage.shift(
                chan, offset_px * np.array([np.sin(ang), np.cos(ang)]), order=1, mode="nearest"
            )
        signal = block_mean(chan, sup)[: shape[0], : shape[1]]
        channels[name] = poisson_gaussian(rng, signal, p["photons"][name], p["read_noise"], 4.0)
    return np.stack([channels["red"], channels["green"], channels["blue"]], axis=-1)


# ------------------------------------------------------------------------ the case


def _farthest_points(rng: np.random.Generator, pts: np.ndarray, k: int) -> np.ndarray:
    chosen = [int(rng.integers(len(pts)))]
    dist = np.hypot(*(pts - pts[chosen[0]]).T)
    while len(chosen) < min(k, len(pts)):
        nxt = int(np.argmax(dist))
        chosen.append(nxt)
        dist = np.minimum(dist, np.hypot(*(pts - pts[nxt]).T))
    return np.array(chosen)


def make_analogy_case(
    seed: int, index: int, params: dict | None = None, name: str | None = None
) -> SyntheticCase:
    """Generate one TEM/confocal case of the image-analogy track.

    Parameters
    ----------
    seed : int
        Dataset seed; with ``index`` it fixes every random choice.
    index : int
        Case number within the dataset (0-based).
    params : dict, optional
        Overrides of :data:`DEFAULT_ANALOGY_PARAMS`.
    name : str, optional
        Case name (default ``temNN``).

    Returns
    -------
    SyntheticCase
        ``em`` = TEM (uint8, rows x cols at ``tem_px_per_um``), ``lm`` = confocal RGB
        (uint8, rows x cols x 3 at ``confocal_px_per_um``), manual-like landmarks
        (um, TEM and confocal frames) and the ground truth: the affine TEM um ->
        confocal um, the nominal TEM box, the true landmark positions.
    """
    p = merge_params(DEFAULT_ANALOGY_PARAMS, params)
    name = name or f"tem{index + 1:02d}"
    rng = np.random.default_rng([seed, 100, index])
    tem_ppu, lm_ppu = float(p["tem_px_per_um"]), float(p["confocal_px_per_um"])
    tem_shape = (
        int(round(p["tem_field_um"][1] * tem_ppu)),
        int(round(p["tem_field_um"][0] * tem_ppu)),
    )
    lm_shape = (
        int(round(p["confocal_field_um"][1] * lm_ppu)),
        int(round(p["confocal_field_um"][0] * lm_ppu)),
    )
    tem_w, tem_h = tem_shape[1] / tem_ppu, tem_shape[0] / tem_ppu
    lm_w, lm_h = lm_shape[1] / lm_ppu, lm_shape[0] / lm_ppu
    if lm_w < tem_w * 1.5 or lm_h < tem_h * 1.5:
        raise ValueError(
            f"confocal field {lm_w:.1f} x {lm_h:.1f} um must be at least 1.5x the "
            f"TEM field {tem_w:.1f} x {tem_h:.1f} um"
        )

    # Ground truth: TEM field centre -> nominal box centre, then a weak affine.
    half_diag = 0.5 * np.hypot(tem_w, tem_h)
    box_c = rng.uniform(
        (half_diag + 1.5, half_diag + 1.5), (lm_w - half_diag - 1.5, lm_h - half_diag - 1.5)
    )
    tem_c = np.array([tem_w / 2, tem_h / 2])
    rot = rng.uniform(*p["rotation_deg"]) * rng.choice([-1.0, 1.0])
    scale = 1.0 + rng.uniform(-p["scale_range"], p["scale_range"], 2)
    shear = rng.uniform(-p["shear_range"], p["shear_range"])
    ang = rng.uniform(0, 2 * np.pi)
    t_small = p["translation_um"] * np.array([np.cos(ang), np.sin(ang)])
    gt = affine_matrix(
        rot, tuple(scale), shear, tuple(box_c - tem_c + t_small), bool(p["mirror"]), tuple(tem_c)
    )

    # Tissue over the whole confocal field, in TEM (tissue) coordinates.
    inv = np.linalg.inv(gt)
    corners = apply(inv, np.array([[0, 0], [lm_w, 0], [0, lm_h], [lm_w, lm_h]]))
    bounds = (*(corners.min(0) - 1.0), *(corners.max(0) + 1.0))
    tissue = _make_tissue(rng, tuple(bounds), (0.0, 0.0, tem_w, tem_h), p)

    tem = _render_tem(tissue, tem_shape, tem_ppu, rng, p)
    confocal = _render_confocal(tissue, lm_shape, lm_ppu, inv @ np.eye(3), rng, p)

    # Landmarks on salient structures that both modalities show.
    ax = tissue.axons
    big = tissue.in_section & (np.minimum(ax.a, ax.b) > 0.35)
    cand = [
        np.stack([ax.cx[big], ax.cy[big]], 1),
        np.stack([tissue.nuclei.cx, tissue.nuclei.cy], 1),
    ]
    for g in np.unique(tissue.lipo_granule):
        sel = tissue.lipo_granule == g
        cand.append(np.array([[tissue.lipo.cx[sel].mean(), tissue.lipo.cy[sel].mean()]]))
    k = int(rng.integers(p["n_landmarks"][0], p["n_landmarks"][1] + 1))
    edge = min(0.7, 0.1 * min(tem_w, tem_h))

    def inside(pts: np.ndarray) -> np.ndarray:
        return pts[np.all((pts > edge) & (pts < np.array([tem_w, tem_h]) - edge), axis=1)]

    cand = inside(np.concatenate(cand))
    if len(cand) < k:  # small fields: smaller axons too, largest first
        small = tissue.in_section & ~big
        order = np.argsort(-np.minimum(ax.a, ax.b)[small])
        extra = inside(np.stack([ax.cx[small], ax.cy[small]], 1)[order])
        cand = np.concatenate([cand, extra[: k - len(cand)]])
    if len(cand) < 3:
        raise ValueError(
            f"case {name}: the TEM field ({tem_w:.2f} x {tem_h:.2f} um) holds "
            f"{len(cand)} salient structures; landmarks need at least 3"
        )
    true_em = cand[_farthest_points(rng, cand, k)]
    sigma = p["annotator_noise_um"] / np.sqrt(2.0)  # per axis, so the RMS click error is as set
    em_pts = true_em + rng.normal(0, sigma, true_em.shape)
    lm_pts = apply(gt, true_em) + rng.normal(0, sigma, true_em.shape)
    landmarks = pd.DataFrame(
        {
            "name": [f"L{i + 1:02d}" for i in range(len(true_em))],
            "em_x_um": em_pts[:, 0],
            "em_y_um": em_pts[:, 1],
            "lm_x_um": lm_pts[:, 0],
            "lm_y_um": lm_pts[:, 1],
        }
    )[LANDMARK_COLUMNS]

    truth = {
        "case": name,
        "track": "analogy",
        "seed": int(seed),
        "index": int(index),
        "transform": Transform(
            gt,
            moving="em",
            fixed="lm",
            method="ground truth (synthetic)",
            extra={
                "rotation_deg": rot,
                "scale": scale.tolist(),
                "shear": shear,
                "translation_from_box_um": t_small.tolist(),
            },
        ).to_dict(),
        "em_px_per_um": tem_ppu,
        "lm_px_per_um": lm_ppu,
        "em_shape": list(tem_shape),
        "lm_shape": list(lm_shape),
        "tem_box_center_in_lm_um": box_c.tolist(),
        "landmarks_true_em_um": true_em.tolist(),
        "landmarks_true_lm_um": apply(gt, true_em).tolist(),
        "annotator_noise_um": p["annotator_noise_um"],
        "counts": {
            "myelinated_axons_in_section": int(tissue.in_section.sum()),
            "myelinated_axons_out_of_section": int((~tissue.in_section).sum()),
            "nuclei": len(tissue.nuclei),
            "lipofuscin_granules": int(len(np.unique(tissue.lipo_granule))),
            "mitochondria": len(tissue.mito),
            "unmyelinated_processes": len(tissue.processes),
        },
        "params": p,
    }
    return SyntheticCase(name, tem, tem_ppu, confocal, lm_ppu, landmarks, truth)
