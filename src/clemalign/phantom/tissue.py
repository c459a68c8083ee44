"""The simple (2D) tissue model of the TEM/confocal phantom: one affine between the
modalities, no depth (``synthetic.analogy.model: simple``; fast, for tests).

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

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ..transforms import apply, px_to_um
from ._common import (
    ValueNoise,
    confocal_detector,
    coverage,
    ellipse_distance,
    to_uint8,
)

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

    def take(self, x: float, y: float, r: float, gap: float) -> bool:
        """Reserve the disc if it is :meth:`free`; say whether it was."""
        if self.free(x, y, r, gap):
            self.add(x, y, r)
            return True
        return False


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


def place_neuropil(
    rng: np.random.Generator,
    box: tuple[float, float, float, float],
    free: Callable[[float, float, float, float], bool],
) -> tuple[_Objects, _Objects]:
    """Mitochondria and unmyelinated processes (TEM only), dart-thrown over ``box`` (um).

    ``free(x, y, r, gap)`` says whether a disc fits (and reserves it when it does).

    Returns
    -------
    mitochondria, processes : _Objects
    """
    x0, y0, x1, y1 = box
    area = (x1 - x0) * (y1 - y0)
    mito, proc = [], []
    for _ in range(int(area * 0.9)):
        c = rng.uniform((x0, y0), (x1, y1))
        a = rng.uniform(0.22, 0.55)
        if free(c[0], c[1], a, 0.03):
            mito.append((c[0], c[1], a, rng.uniform(0.09, 0.16)))
    for _ in range(int(area * 3.0)):
        c = rng.uniform((x0, y0), (x1, y1))
        r = rng.uniform(0.06, 0.22)
        if free(c[0], c[1], r, 0.02):
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
    return mitos, procs


def make_tissue(
    rng: np.random.Generator,
    bounds: tuple[float, float, float, float],
    tem_box: tuple[float, float, float, float],
    p: dict,
) -> Tissue:
    """Draw the 2D tissue over ``bounds`` (um, TEM frame); ``tem_box`` (the TEM field,
    um) gets a nucleus when one fits.

    Objects are placed without overlap in this order (each keeps the space it takes):
    nuclei, lipofuscin granules, in-section myelinated axons, then the neuropil's
    mitochondria and unmyelinated processes; out-of-section myelin may overlap them.
    The steps consume ``rng`` in this order: reordering them changes every phantom.
    """
    grid = _Grid(bounds, 1.0)
    noise = _noise_fields(rng, bounds)
    nuclei = _nuclei(rng, grid, bounds, tem_box, p)
    clumps = [_heterochromatin(rng, nuclei, i) for i in range(len(nuclei))]
    lipo, droplet, granule = _lipofuscin(rng, grid, bounds, nuclei)
    axons, g_ratio, in_section = _myelinated_axons(rng, grid, bounds, noise["tract"], p)
    stain = _stain_efficiency(rng, in_section)
    mitos, procs = place_neuropil(rng, bounds, grid.take)
    return Tissue(
        bounds=bounds,
        axons=axons,
        g_ratio=g_ratio,
        stain=stain,
        in_section=in_section,
        nuclei=nuclei,
        clumps=clumps,
        mito=mitos,
        lipo=lipo,
        lipo_droplet=droplet,
        lipo_granule=granule,
        processes=procs,
        noise=noise,
    )


def _area(bounds: tuple[float, float, float, float]) -> float:
    """Area (um^2) of a rectangle (xmin, ymin, xmax, ymax)."""
    return (bounds[2] - bounds[0]) * (bounds[3] - bounds[1])


def _noise_fields(
    rng: np.random.Generator, bounds: tuple[float, float, float, float]
) -> dict[str, ValueNoise]:
    """Smooth fields: axon-tract density, neuropil grey, membranes, grain, chromatin, myelin bg."""
    return {
        "tract": ValueNoise(rng, bounds, (10.0, 5.0), (0.7, 0.3)),
        "neuropil": ValueNoise(rng, bounds, (0.4, 0.15, 0.06, 0.025)),
        "membrane": ValueNoise(rng, bounds, (0.5, 0.25), (0.6, 0.4)),
        "fine": ValueNoise(rng, bounds, (0.05, 0.02)),
        "chromatin": ValueNoise(rng, bounds, (0.5, 0.2), (0.6, 0.4)),
        "myelin_bg": ValueNoise(rng, bounds, (3.0, 1.0)),
    }


def _elongated(
    rng: np.random.Generator,
    discs: np.ndarray,
    max_aspect: float,
    wobble: float,
) -> _Objects:
    """Ellipses of the area of discs (x, y, r, ...): random aspect, orientation, wobble."""
    aspect = rng.uniform(1.0, max_aspect, len(discs))
    return _Objects(
        discs[:, 0],
        discs[:, 1],
        discs[:, 2] * np.sqrt(aspect),
        discs[:, 2] / np.sqrt(aspect),
        rng.uniform(0, np.pi, len(discs)),
        _wobbles(rng, len(discs), wobble),
    )


def _nuclei(
    rng: np.random.Generator,
    grid: _Grid,
    bounds: tuple[float, float, float, float],
    tem_box: tuple[float, float, float, float],
    p: dict,
) -> _Objects:
    """Nuclei: one guaranteed inside the TEM field (when it fits), the rest anywhere."""
    n_nuc = max(1, rng.poisson(p["nucleus_density_per_100um2"] * _area(bounds) / 100.0))
    x0, y0, x1, y1 = bounds
    tx0, ty0, tx1, ty1 = tem_box
    nuc = []
    while len(nuc) < n_nuc:
        r = rng.uniform(1.9, 3.2)
        if not nuc and min(tx1 - tx0, ty1 - ty0) > 2 * (r + 1.5):
            c = rng.uniform((tx0 + r + 1.0, ty0 + r + 1.0), (tx1 - r - 1.0, ty1 - r - 1.0))
        else:
            c = rng.uniform((x0, y0), (x1, y1))
        if grid.take(c[0], c[1], r * 1.15, 1.0):
            nuc.append((c[0], c[1], r))
    return _elongated(rng, np.array(nuc), 1.3, 0.05)


def _heterochromatin(rng: np.random.Generator, nuclei: _Objects, i: int) -> np.ndarray:
    """Heterochromatin clumps (m, 3: x, y, r) of nucleus ``i``, mostly near the envelope."""
    m = rng.integers(12, 24)
    ang = rng.uniform(0, 2 * np.pi, m)
    rad = np.where(rng.random(m) < 0.7, rng.uniform(0.7, 0.9, m), rng.uniform(0.0, 0.6, m))
    a, b, t = nuclei.a[i], nuclei.b[i], nuclei.angle[i]
    u, v = rad * a * np.cos(ang), rad * b * np.sin(ang)
    cx = nuclei.cx[i] + np.cos(t) * u - np.sin(t) * v
    cy = nuclei.cy[i] + np.sin(t) * u + np.cos(t) * v
    return np.stack([cx, cy, rng.uniform(0.1, 0.3, m)], axis=1)


def _lipofuscin(
    rng: np.random.Generator,
    grid: _Grid,
    bounds: tuple[float, float, float, float],
    nuclei: _Objects,
) -> tuple[_Objects, np.ndarray, np.ndarray]:
    """Lipofuscin granules, each a cluster of sub-discs: (sub-discs, droplet?, granule id)."""
    centres = _lipofuscin_centres(rng, bounds, nuclei)
    sub, droplet, granule = [], [], []
    for k, (cx, cy) in enumerate(centres):
        if not grid.take(cx, cy, 0.55, 0.1):
            continue
        for j in range(rng.integers(2, 6)):
            off = rng.normal(0, 0.18, 2) if j else np.zeros(2)
            sub.append((cx + off[0], cy + off[1], rng.uniform(0.12, 0.3)))
            droplet.append(j > 0 and rng.random() < 0.35)
            granule.append(k)
    sub = np.array(sub).reshape(-1, 3)
    discs = _Objects(
        sub[:, 0],
        sub[:, 1],
        sub[:, 2],
        sub[:, 2] * rng.uniform(0.8, 1.0, len(sub)),
        rng.uniform(0, np.pi, len(sub)),
        _wobbles(rng, len(sub), 0.08),
    )
    return discs, np.array(droplet, dtype=bool), np.array(granule, dtype=int)


def _lipofuscin_centres(
    rng: np.random.Generator, bounds: tuple[float, float, float, float], nuclei: _Objects
) -> list[tuple[float, float]]:
    """Candidate granule centres: 1-3 just outside each nucleus, then some scattered."""
    centres = []
    for i in range(len(nuclei)):
        for _ in range(rng.integers(1, 4)):
            ang = rng.uniform(0, 2 * np.pi)
            d = max(nuclei.a[i], nuclei.b[i]) + rng.uniform(0.6, 1.4)
            centres.append((nuclei.cx[i] + d * np.cos(ang), nuclei.cy[i] + d * np.sin(ang)))
    x0, y0, x1, y1 = bounds
    for _ in range(rng.poisson(_area(bounds) / 90.0)):
        centres.append(tuple(rng.uniform((x0, y0), (x1, y1))))
    return centres


def _myelinated_axons(
    rng: np.random.Generator,
    grid: _Grid,
    bounds: tuple[float, float, float, float],
    tract: ValueNoise,
    p: dict,
) -> tuple[_Objects, np.ndarray, np.ndarray]:
    """Myelinated axons in and out of the TEM section: (outlines, g-ratio, in section?)."""
    ax = _axons_in_section(rng, grid, bounds, tract, p)
    ax += _axons_out_of_section(rng, bounds, int(len(ax) * 0.25), p)
    ax = np.array(ax, dtype=float).reshape(-1, 5)
    return _elongated(rng, ax, 1.35, 0.06), ax[:, 3], ax[:, 4].astype(bool)


def _axons_in_section(
    rng: np.random.Generator,
    grid: _Grid,
    bounds: tuple[float, float, float, float],
    tract: ValueNoise,
    p: dict,
) -> list[tuple[float, float, float, float, bool]]:
    """Axons (x, y, outer r, g, True) cut by the section: dense in tracts, sparse elsewhere."""
    rmin, rmax = p["axon_radius_um"]
    gmin, gmax = p["g_ratio"]
    x0, y0, x1, y1 = bounds
    ax = []
    target = int(_area(bounds) * 1.6)
    for _ in range(target * 6):
        if len(ax) >= target:
            break
        c = rng.uniform((x0, y0), (x1, y1))
        dens = float(tract(np.array([c[0]]), np.array([c[1]]))[0])
        if rng.random() > np.clip((dens - 0.38) * 4.0, 0.04, 1.0):
            continue
        r_in = np.exp(rng.uniform(np.log(rmin), np.log(rmax)))
        g = rng.uniform(gmin, gmax)
        r_out = r_in / g
        if grid.take(c[0], c[1], r_out * 1.1, 0.04):
            ax.append((c[0], c[1], r_out, g, True))
    return ax


def _axons_out_of_section(
    rng: np.random.Generator, bounds: tuple[float, float, float, float], n: int, p: dict
) -> list[tuple[float, float, float, float, bool]]:
    """``n`` axons (x, y, outer r, g, False) outside the section, seen only by confocal."""
    rmin, rmax = p["axon_radius_um"]
    gmin, gmax = p["g_ratio"]
    x0, y0, x1, y1 = bounds
    ax = []
    for _ in range(n):
        c = rng.uniform((x0, y0), (x1, y1))
        r_out = np.exp(rng.uniform(np.log(rmin), np.log(rmax))) / rng.uniform(gmin, gmax)
        ax.append((c[0], c[1], r_out, rng.uniform(gmin, gmax), False))
    return ax


def _stain_efficiency(rng: np.random.Generator, in_section: np.ndarray) -> np.ndarray:
    """Confocal myelin staining per axon: strong in the section, weaker outside it."""
    n = len(in_section)
    return np.where(in_section, rng.uniform(0.55, 1.0, n), rng.uniform(0.2, 0.55, n))


# ------------------------------------------------------------------------ rendering


class _Frame:
    """A pixel grid (or a strip of one) and its mapping into tissue um."""

    def __init__(
        self,
        shape: tuple[int, int],
        px_per_um: float,
        to_tissue: np.ndarray,
        row0: int = 0,
        warp: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]] | None = None,
        warp_reach_um: float = 0.0,
    ) -> None:
        self.shape = shape
        self.ppu = px_per_um
        self.m = to_tissue
        self.inv = np.linalg.inv(to_tissue)
        self.row0 = row0
        self.warp = warp  # image um -> displacement (dx, dy) um added before the affine
        self.warp_reach = warp_reach_um  # largest |displacement|, um
        self._full: tuple[np.ndarray, np.ndarray] | None = None

    def cache(self) -> _Frame:
        """Compute the tissue coordinates of every pixel once; :meth:`block` then slices."""
        self._full = self._block(slice(0, self.shape[0]), slice(0, self.shape[1]))
        return self

    def block(self, rows: slice, cols: slice) -> tuple[np.ndarray, np.ndarray]:
        """Tissue (x, y) um of the pixel centres of a block (local rows, cols)."""
        if self._full is not None:
            return self._full[0][rows, cols], self._full[1][rows, cols]
        return self._block(rows, cols)

    def _block(self, rows: slice, cols: slice) -> tuple[np.ndarray, np.ndarray]:
        r = px_to_um(np.arange(rows.start, rows.stop) + self.row0, self.ppu)
        c = px_to_um(np.arange(cols.start, cols.stop), self.ppu)
        x, y = np.meshgrid(c, r)
        if self.warp is not None:
            dx, dy = self.warp(x, y)
            x, y = x + dx, y + dy
        xt = self.m[0, 0] * x + self.m[0, 1] * y + self.m[0, 2]
        yt = self.m[1, 0] * x + self.m[1, 1] * y + self.m[1, 2]
        return xt, yt

    def window(self, bbox: tuple[float, float, float, float]) -> tuple[slice, slice] | None:
        """Pixel window (local rows, cols) covering a tissue bounding box, or None."""
        reach = self.warp_reach
        bx0, by0, bx1, by1 = bbox[0] - reach, bbox[1] - reach, bbox[2] + reach, bbox[3] + reach
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


def _tem_background(t: Tissue, frame: _Frame) -> np.ndarray:
    """Neuropil: grey level, membrane texture and fine grain (TEM, [0, 1])."""
    xt, yt = frame.block(slice(0, frame.shape[0]), slice(0, frame.shape[1]))
    nz = t.noise
    img = 0.64 + 0.22 * (nz["neuropil"](xt, yt) - 0.5)
    memb = nz["membrane"](xt, yt) - 0.5
    img -= 0.22 * np.exp(-((memb / 0.018) ** 2))
    img += 0.10 * (nz["fine"](xt, yt) - 0.5)
    return img


def _paint_processes(img: np.ndarray, t: Tissue, frame: _Frame) -> None:
    """Unmyelinated processes: membrane outline, light interior."""
    pix, nz = frame.pixel_um, t.noise
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


def _paint_mito(img: np.ndarray, t: Tissue, frame: _Frame) -> None:
    """Mitochondria: dark double membrane, cristae."""
    pix = frame.pixel_um
    for i, win, x, y in _objects_in(frame, t.mito):
        ang = t.mito.angle[i]
        d, _ = ellipse_distance(
            x, y, (t.mito.cx[i], t.mito.cy[i]), (t.mito.a[i], t.mito.b[i]), ang, t.mito.wobble[i]
        )
        u = np.cos(ang) * (x - t.mito.cx[i]) + np.sin(ang) * (y - t.mito.cy[i])
        cristae = 0.44 + 0.12 * np.cos(2 * np.pi * u / 0.07)
        _paint(img, win, coverage(d, pix), 0.24)
        _paint(img, win, coverage(d + 0.015, pix), cristae)


def _paint_nuclei(img: np.ndarray, t: Tissue, frame: _Frame) -> None:
    """Nuclei: envelope, nucleoplasm, peripheral and clumped heterochromatin."""
    pix, nz = frame.pixel_um, t.noise
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


def _paint_axons(img: np.ndarray, t: Tissue, frame: _Frame) -> None:
    """Myelinated axons cut across (2D model): dark sheath, light axoplasm."""
    pix, nz = frame.pixel_um, t.noise
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


def _paint_lipo(img: np.ndarray, t: Tissue, frame: _Frame) -> None:
    """Lipofuscin: dark granules with light lipid droplets."""
    pix = frame.pixel_um
    for i, win, x, y in _objects_in(frame, t.lipo):
        lp = t.lipo
        d, _ = ellipse_distance(
            x, y, (lp.cx[i], lp.cy[i]), (lp.a[i], lp.b[i]), lp.angle[i], lp.wobble[i]
        )
        _paint(img, win, coverage(d, pix), 0.6 if t.lipo_droplet[i] else 0.15)


def _render_tem_strip(t: Tissue, frame: _Frame) -> np.ndarray:
    img = _tem_background(t, frame)
    for painter in (_paint_processes, _paint_mito, _paint_nuclei, _paint_axons, _paint_lipo):
        painter(img, t, frame)
    return img


def render_strips(
    shape: tuple[int, int],
    ppu: float,
    rows_per_tile: int,
    frame_of: Callable[[int, int], _Frame],
    paint: Callable[[_Frame], np.ndarray],
    shade: Callable[[np.ndarray, _Frame, int, int, slice], np.ndarray],
    rng: np.random.Generator,
    noise: float,
) -> np.ndarray:
    """A TEM image rendered in row strips (bounded memory at any sampling).

    Each strip, with a halo for the ~8 nm imaging blur, is painted on ``frame_of(row0,
    rows)``, blurred, cropped, shaded by ``shade(strip, frame, r0, r1, rows_in_frame)``
    (illumination, staining) and given Gaussian noise of ``noise`` ([0, 1] units).

    Returns
    -------
    ndarray of uint8, shape ``shape``
    """
    out = np.empty(shape, dtype=np.uint8)
    blur_px = 0.008 * ppu  # ~8 nm imaging blur
    halo = max(2, int(np.ceil(3 * blur_px)))
    for r0 in range(0, shape[0], rows_per_tile):
        r1 = min(shape[0], r0 + rows_per_tile)
        a0, a1 = max(0, r0 - halo), min(shape[0], r1 + halo)
        frame = frame_of(a0, a1 - a0)
        inner = slice(r0 - a0, r0 - a0 + (r1 - r0))
        strip = ndimage.gaussian_filter(paint(frame), blur_px)[inner]
        strip = shade(strip, frame, r0, r1, inner)
        strip += rng.normal(0, noise, strip.shape).astype(np.float32)
        out[r0:r1] = to_uint8(strip)
    return out


def render_tem_2d(
    t: Tissue, shape: tuple[int, int], ppu: float, rng: np.random.Generator, p: dict
) -> np.ndarray:
    """The simple model's TEM (uint8): the 2D tissue under a tilted illumination."""
    tilt = rng.normal(0, 1, 2)
    tilt = 0.08 * tilt / np.linalg.norm(tilt)

    def shade(strip: np.ndarray, _frame: _Frame, r0: int, r1: int, _inner: slice) -> np.ndarray:
        yy = (np.arange(r0, r1) + 0.5)[:, None] / shape[0] - 0.5
        xx = (np.arange(shape[1]) + 0.5)[None, :] / shape[1] - 0.5
        return strip * (1.0 + tilt[0] * xx + tilt[1] * yy)

    return render_strips(
        shape,
        ppu,
        int(p["rows_per_tile"]),
        lambda row0, rows: _Frame((rows, shape[1]), ppu, np.eye(3), row0=row0),
        lambda frame: _render_tem_strip(t, frame),
        shade,
        rng,
        p["tem_noise"],
    )


def render_confocal_2d(
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
    return confocal_detector(
        rng,
        {"red": red, "green": green, "blue": blue},
        sup,
        shape,
        p["psf_fwhm_um"] / 2.3548 * ppu * sup,
        p["channel_offset_um"] * ppu * sup,
        p["photons"],
        p["read_noise"],
    )
