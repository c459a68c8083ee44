"""The realistic tissue model: a 3D slab seen through a thin TEM section and a thick
confocal optical section, with a non-rigid distortion between the two.

Physics, in the order a specimen meets it (every length in um, tissue frame = the
block face before sectioning, z = 0 the plane of the TEM section):

* **Fibres are 3D tubes.** Myelinated axons run straight through the slab in a few
  bundles (domains), each with its own 3D orientation, so that one field shows rings
  (fibres along z), ellipses (oblique) and long bands (fibres in the plane). Within a
  bundle, fibres are packed without overlap in the plane perpendicular to the bundle.
  Nuclei are ellipsoids and lipofuscin granules clusters of spheres, anywhere in depth.
* **TEM sees a ~70 nm section.** Every object is integrated through the section
  thickness (a box profile), so oblique walls are shaded as in a real micrograph, and
  objects above or below the section are invisible. Mitochondria and unmyelinated
  processes are TEM-only and drawn in the section plane.
* **Confocal sees a thick optical section.** Each object is integrated through a
  Gaussian axial PSF (FWHM ~0.8 um) in closed form (tube and ellipsoid intervals in z,
  error functions), then blurred by the lateral PSF. Structures above and below the
  TEM section show, blurred, only in the confocal.
* **Diffuse stain**: the lipophilic myelin dye labels neuropil membranes weakly, out of
  focus light adds a broad haze, and the background varies slowly.
* **Non-rigid distortion** of the TEM section: compression along the cutting direction
  (uneven across the knife edge) and low-frequency wrinkle/swelling warps. The TEM
  pixel at ``x`` (um) shows the tissue at ``x + w(x)``; the true TEM -> confocal map is
  ``A (x + w(x))``.
* **TEM realism**: uneven heavy-metal staining and section-thickness variation (with
  knife chatter) modulate the optical density.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
from scipy import ndimage, special

from ..transforms import apply, fit_affine, translation_matrix
from ._common import ValueNoise, block_mean, confocal_detector, ellipse_distance
from .tissue import (
    Tissue,
    _Frame,
    _Grid,
    _Objects,
    _objects_in,
    _paint,
    _paint_lipo,
    _paint_mito,
    _paint_nuclei,
    _paint_processes,
    _tem_background,
    _wobbles,
    place_neuropil,
    render_strips,
)

#: Parameters of the realistic model (``synthetic.analogy.realistic`` in config.yaml).
DEFAULT_REALISTIC_PARAMS: dict = {
    "tem_section_um": 0.07,
    "axial_fwhm_um": 0.8,
    "lateral_fwhm_um": 0.7,
    "bundles": [2, 4],
    "bundle_dispersion_deg": 3.0,
    "fibre_packing": 0.55,
    "nucleus_density_per_1000um3": 0.4,
    "slab_half_um": 3.5,
    "stain_efficiency": [0.05, 1.0],
    "stain_saturation": 0.5,
    "neuropil_stain": 0.05,
    "haze": {"fraction": 0.1, "sigma_um": 2.0},
    "background": {"level": 0.03, "variation": 0.04, "scale_um": 12.0},
    "photons": {"red": 100.0, "green": 220.0, "blue": 130.0},
    "compression": [0.02, 0.08],
    "nonrigid_rms_um": [0.1, 0.3],
    "warp_wavelength_um": [5.0, 15.0],
    "tem_stain_variation": 0.2,
    "tem_thickness_variation": 0.12,
    "chatter_period_um": [0.8, 2.5],
}

_FAR = 1e6  # "infinite" z for tubes along z, um


# ----------------------------------------------------------------------- profiles


class _Profile:
    """Axial weighting of an imaging mode: the weight of each depth z (um)."""

    def __init__(self, kind: str, width_um: float) -> None:
        self.kind = kind
        self.width = width_um
        if kind == "box":  # TEM section of thickness width, centred on z = 0
            self.reach = width_um / 2
        else:  # confocal: Gaussian of FWHM width
            self.sigma = width_um / 2.3548
            self.reach = 3.0 * self.sigma

    def integral(self, z1: np.ndarray, z2: np.ndarray) -> np.ndarray:
        """Weight of the depth interval [z1, z2] (0 where z2 <= z1)."""
        if self.kind == "box":
            h = self.width / 2
            return np.clip(np.minimum(z2, h) - np.maximum(z1, -h), 0, None) / self.width
        out = special.ndtr(z2 / self.sigma) - special.ndtr(z1 / self.sigma)
        return np.where(z2 > z1, out, 0.0)


def _tube_interval(
    qx: np.ndarray, qy: np.ndarray, pz: float, v: np.ndarray, r: float
) -> tuple[np.ndarray, np.ndarray]:
    """Depth interval [z1, z2] where the column above (x, y) is within ``r`` of an axis.

    The axis passes through ``(px, py, pz)`` with unit direction ``v``; ``qx, qy`` are
    the column's offsets from ``(px, py)``. Empty intervals have ``z2 <= z1``.
    """
    vx, vy, vz = v
    a = 1.0 - vz * vz
    s = qx * vx + qy * vy
    c = qx * qx + qy * qy - s * s
    if a < 1e-10:  # along z: inside at every depth, or never
        inside = c < r * r
        return np.where(inside, -_FAR, 0.0), np.where(inside, _FAR, 0.0)
    t_min = s * vz / a
    d2_min = c - (s * vz) ** 2 / a
    half = np.sqrt(np.clip(r * r - d2_min, 0, None) / a)
    half = np.where(d2_min < r * r, half, -1.0)
    return pz + t_min - half, pz + t_min + half


def _ellipsoid_interval(rho: np.ndarray, zc: float, c: float) -> tuple[np.ndarray, np.ndarray]:
    """Depth interval inside an ellipsoid (vertical semi-axis ``c``) at normalised radius rho."""
    half = c * np.sqrt(np.clip(1.0 - rho * rho, 0, None))
    half = np.where(rho < 1.0, half, -1.0)
    return zc - half, zc + half


# ----------------------------------------------------------------------- the slab


@dataclass
class Fibres:
    """Straight myelinated fibres (tissue um): axis point, direction, radii, stain."""

    p: np.ndarray  # (n, 3) a point of each axis
    v: np.ndarray  # (n, 3) unit directions
    r_out: np.ndarray  # outer (myelin) radius
    g_ratio: np.ndarray  # inner / outer radius
    stain: np.ndarray  # confocal staining efficiency
    bundle: np.ndarray  # bundle index

    def __len__(self) -> int:
        return len(self.r_out)


@dataclass
class Slab:
    """The 3D tissue: fibres, nuclei and lipofuscin in depth, section-plane TEM-only
    objects, and the 2D tissue used for TEM painting (section cuts of 3D objects)."""

    fibres: Fibres | None  # None until packed (packing needs the nuclei)
    bundle_seeds: np.ndarray  # (k, 2) xy of the bundle domains
    nuclei_z: np.ndarray  # centre depth of each nucleus
    nuclei_c: np.ndarray  # vertical semi-axis
    nuclei_xy: _Objects  # footprint ellipses (xy semi-axes, angle, wobble)
    clumps3d: list[np.ndarray]  # per nucleus (m, 4): x, y, z, r of heterochromatin
    lipo3d: np.ndarray  # (m, 4) x, y, z, r of lipofuscin spheres
    lipo_droplet: np.ndarray
    section: Tissue | None  # the objects cut by the TEM section (2D), for TEM painting
    noise: dict[str, ValueNoise]

    def bundle_of(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Bundle domain of tissue points (Voronoi cells with irregular borders)."""
        wx = 4.0 * (self.noise["domain_x"](x, y) - 0.5)
        wy = 4.0 * (self.noise["domain_y"](x, y) - 0.5)
        d = [(x + wx - sx) ** 2 + (y + wy - sy) ** 2 for sx, sy in self.bundle_seeds]
        return np.argmin(np.stack(d), axis=0)

    @cached_property
    def _bundle_raster(self) -> tuple[float, float, np.ndarray]:
        """(x0, y0) um and the bundle index every 0.1 um over the tissue bounds."""
        x0, y0, x1, y1 = self.noise["domain_x"].bounds_um
        gx, gy = np.meshgrid(np.arange(x0, x1 + 0.1, 0.1), np.arange(y0, y1 + 0.1, 0.1))
        return x0, y0, self.bundle_of(gx, gy).astype(np.int16)

    def bundle_lookup(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """:meth:`bundle_of` from a 0.1 um raster (fast, for rendering)."""
        x0, y0, raster = self._bundle_raster
        c = np.clip(np.rint((np.nan_to_num(x) - x0) / 0.1).astype(int), 0, raster.shape[1] - 1)
        r = np.clip(np.rint((np.nan_to_num(y) - y0) / 0.1).astype(int), 0, raster.shape[0] - 1)
        return raster[r, c]


def _direction(inclination: float, azimuth: float) -> np.ndarray:
    return np.array(
        [
            np.sin(inclination) * np.cos(azimuth),
            np.sin(inclination) * np.sin(azimuth),
            np.cos(inclination),
        ]
    )


def _perpendicular_basis(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ref = np.array([1.0, 0.0, 0.0]) if abs(v[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    e1 = np.cross(v, ref)
    e1 /= np.linalg.norm(e1)
    return e1, np.cross(v, e1)


def _axis_anchor(p: np.ndarray, v: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """A canonical point of an axis: its crossing of z = 0, or (near the plane) its
    point closest to the field centre."""
    if abs(v[2]) > 0.02:
        return p - (p[2] / v[2]) * v
    t = np.dot(centre - p, v)
    return p + t * v


def _pack_discs(
    rng: np.random.Generator, rect: tuple[float, float, float, float], packing: float, p: dict
) -> np.ndarray:
    """Non-overlapping fibre cross-sections in a bundle's perpendicular plane.

    Random sequential placement, thinned by a smooth density field (dense tracts and
    sparser regions), until ``packing`` of the area is covered or placement stalls.

    Returns
    -------
    ndarray, shape (n, 4)
        ``a, b`` (position in the plane, um), outer radius (um), g-ratio.
    """
    lo, hi = np.array(rect[:2]), np.array(rect[2:])
    grid = _Grid(rect, 1.0)
    density = ValueNoise(rng, rect, (8.0, 3.0), (0.7, 0.3))
    rmin, rmax = p["axon_radius_um"]
    gmin, gmax = p["g_ratio"]
    area = float(np.prod(hi - lo))
    placed, out, misses = 0.0, [], 0
    while placed < packing * area and misses < 6:
        ab = rng.uniform(lo, hi, (2048, 2))
        keep = rng.random(2048) <= np.clip((density(ab[:, 0], ab[:, 1]) - 0.3) * 3.0, 0.05, 1.0)
        r_out = np.exp(rng.uniform(np.log(rmin), np.log(rmax), 2048)) / (
            g := rng.uniform(gmin, gmax, 2048)
        )
        before = len(out)
        for j in np.flatnonzero(keep):
            if grid.free(ab[j, 0], ab[j, 1], r_out[j], 0.03):
                grid.add(ab[j, 0], ab[j, 1], r_out[j])
                out.append((ab[j, 0], ab[j, 1], r_out[j], g[j]))
                placed += np.pi * r_out[j] ** 2
                if placed >= packing * area:
                    break
        misses = misses + 1 if len(out) - before < 20 else 0
    return np.array(out, float).reshape(-1, 4)


def _make_fibres(
    rng: np.random.Generator,
    bounds: tuple[float, float, float, float],
    slab: Slab,
    p: dict,
    q: dict,
) -> Fibres:
    """Pack straight fibres per bundle in the plane perpendicular to the bundle."""
    x0, y0, x1, y1 = bounds
    centre = np.array([(x0 + x1) / 2, (y0 + y1) / 2, 0.0])
    zs = q["slab_half_um"]
    corners = np.array([[x, y, z] for x in (x0, x1) for y in (y0, y1) for z in (-zs, zs)])
    disp = np.deg2rad(q["bundle_dispersion_deg"])
    out: dict[str, list] = {k: [] for k in ("p", "v", "r", "g", "b")}
    for k in range(len(slab.bundle_seeds)):
        v0 = _direction(np.arccos(rng.uniform(0, 1)), rng.uniform(0, 2 * np.pi))
        e1, e2 = _perpendicular_basis(v0)
        uv = (corners - centre) @ np.stack([e1, e2], 1)
        lo, hi = uv.min(0), uv.max(0)
        discs = _pack_discs(rng, (lo[0], lo[1], hi[0], hi[1]), q["fibre_packing"], p)
        n = len(discs)
        dv = rng.normal(0, disp, (n, 3))
        v = v0[None, :] + dv - (dv @ v0)[:, None] * v0[None, :]
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        points = centre + discs[:, :1] * e1 + discs[:, 1:2] * e2
        for j in range(n):
            # anchored with the bundle's direction, so the packing holds near z = 0
            point = _axis_anchor(points[j], v0, centre)
            # only where this bundle's domain is (nuclei displace fibres: see rendering)
            ts = np.linspace(-2.0, 2.0, 5) if abs(v[j, 2]) > 0.5 else np.linspace(-30, 30, 41)
            pts = point[None, :] + ts[:, None] * v[j][None, :]
            pts = pts[np.abs(pts[:, 2]) <= zs]
            if not len(pts) or not np.any(slab.bundle_of(pts[:, 0], pts[:, 1]) == k):
                continue
            out["p"].append(point)
            out["v"].append(v[j])
            out["r"].append(discs[j, 2])
            out["g"].append(discs[j, 3])
            out["b"].append(k)
    n = len(out["r"])
    return Fibres(
        np.array(out["p"]).reshape(n, 3),
        np.array(out["v"]).reshape(n, 3),
        np.array(out["r"], float),
        np.array(out["g"], float),
        rng.uniform(*q["stain_efficiency"], n),
        np.array(out["b"], int),
    )


def _make_nuclei(
    rng: np.random.Generator,
    bounds: tuple[float, float, float, float],
    tem_box: tuple[float, float, float, float],
    q: dict,
) -> tuple[_Objects, np.ndarray, np.ndarray, list[np.ndarray]]:
    """Nuclei as ellipsoids anywhere in the slab; the first one is cut by the TEM
    section inside the TEM field (a field without any nucleus would give an annotator
    nothing to click on but fibre profiles)."""
    x0, y0, x1, y1 = bounds
    zs = q["slab_half_um"]
    volume = (x1 - x0) * (y1 - y0) * 2 * (zs + 2.0)
    density = q["nucleus_density_per_1000um3"] * np.exp(rng.uniform(np.log(0.5), np.log(2.0)))
    n = max(1, rng.poisson(density * volume / 1000.0))
    rows: list[tuple] = []
    for _ in range(n * 20):
        if len(rows) >= n:
            break
        r = rng.uniform(1.9, 3.2)
        c = np.array([rng.uniform(x0, x1), rng.uniform(y0, y1), rng.uniform(-zs - 2, zs + 2)])
        if not rows:
            tx0, ty0, tx1, ty1 = tem_box
            margin = min(r + 1.5, 0.45 * min(tx1 - tx0, ty1 - ty0))
            c[:2] = rng.uniform((tx0 + margin, ty0 + margin), (tx1 - margin, ty1 - margin))
            c[2] = rng.uniform(-0.4, 0.4) * r
        if all(np.linalg.norm(c - np.array(o[:3])) > r + o[3] + 0.5 for o in rows):
            rows.append((*c, r))
    arr = np.array(rows, float).reshape(-1, 4)
    aspect = rng.uniform(1.0, 1.3, len(arr))
    nuclei = _Objects(
        arr[:, 0],
        arr[:, 1],
        arr[:, 3] * np.sqrt(aspect),
        arr[:, 3] / np.sqrt(aspect),
        rng.uniform(0, np.pi, len(arr)),
        _wobbles(rng, len(arr), 0.05),
    )
    c_axis = arr[:, 3] * rng.uniform(0.75, 1.0, len(arr))
    clumps = []
    for i in range(len(arr)):
        m = rng.integers(20, 40)
        dirs = rng.normal(size=(m, 3))
        dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
        rad = np.where(rng.random(m) < 0.7, rng.uniform(0.7, 0.9, m), rng.uniform(0.0, 0.6, m))
        a, b, t = nuclei.a[i], nuclei.b[i], nuclei.angle[i]
        u, w = rad * a * dirs[:, 0], rad * b * dirs[:, 1]
        cx = nuclei.cx[i] + np.cos(t) * u - np.sin(t) * w
        cy = nuclei.cy[i] + np.sin(t) * u + np.cos(t) * w
        cz = arr[i, 2] + rad * c_axis[i] * dirs[:, 2]
        clumps.append(np.stack([cx, cy, cz, rng.uniform(0.15, 0.35, m)], axis=1))
    return nuclei, arr[:, 2], c_axis, clumps


def _make_lipofuscin(
    rng: np.random.Generator,
    bounds: tuple[float, float, float, float],
    nuclei: _Objects,
    nuclei_z: np.ndarray,
    q: dict,
) -> tuple[np.ndarray, np.ndarray]:
    x0, y0, x1, y1 = bounds
    zs = q["slab_half_um"]
    centres = []
    for i in range(len(nuclei)):
        for _ in range(rng.integers(1, 4)):
            d = rng.normal(size=3)
            d /= np.linalg.norm(d)
            reach = max(nuclei.a[i], nuclei.b[i]) + rng.uniform(0.6, 1.4)
            centres.append(np.array([nuclei.cx[i], nuclei.cy[i], nuclei_z[i]]) + reach * d)
    for _ in range(rng.poisson((x1 - x0) * (y1 - y0) * 2 * zs / 400.0)):
        centres.append(np.array([rng.uniform(x0, x1), rng.uniform(y0, y1), rng.uniform(-zs, zs)]))
    spheres, droplet = [], []
    for c in centres:
        for j in range(rng.integers(2, 6)):
            off = rng.normal(0, 0.18, 3) if j else np.zeros(3)
            spheres.append((*(c + off), rng.uniform(0.12, 0.3)))
            droplet.append(j > 0 and rng.random() < 0.35)
    return np.array(spheres, float).reshape(-1, 4), np.array(droplet, bool)


def _section_objects(slab: Slab, half: float) -> tuple[_Objects, list, _Objects, np.ndarray]:
    """2D cuts of the 3D nuclei, clumps and lipofuscin by the TEM section (z ~ 0)."""
    n = slab.nuclei_xy
    k = np.sqrt(np.clip(1.0 - (slab.nuclei_z / slab.nuclei_c) ** 2, 0, None))
    keep = k > 0.05
    nuclei = _Objects(
        n.cx[keep],
        n.cy[keep],
        n.a[keep] * k[keep],
        n.b[keep] * k[keep],
        n.angle[keep],
        n.wobble[keep],
    )
    clumps = []
    for i in np.flatnonzero(keep):
        c = slab.clumps3d[i]
        r2 = c[:, 3] ** 2 - np.clip(np.abs(c[:, 2]) - half, 0, None) ** 2
        c = c[r2 > 0]
        clumps.append(np.column_stack([c[:, 0], c[:, 1], np.sqrt(r2[r2 > 0])]))
    lp = slab.lipo3d
    r2 = lp[:, 3] ** 2 - np.clip(np.abs(lp[:, 2]) - half, 0, None) ** 2
    sel = r2 > 0
    r = np.sqrt(r2[sel])
    lipo = _Objects(lp[sel, 0], lp[sel, 1], r, r, np.zeros(sel.sum()), np.zeros((sel.sum(), 0, 2)))
    return nuclei, clumps, lipo, slab.lipo_droplet[sel]


def _section_fibre_mask(
    slab: Slab, box: tuple[float, float, float, float], ppu: float, profile: _Profile
) -> np.ndarray:
    """Boolean occupancy (rows, cols) of the fibre cuts in the section over ``box``."""
    x0, y0, x1, y1 = box
    shape = (int(np.ceil((y1 - y0) * ppu)), int(np.ceil((x1 - x0) * ppu)))
    frame = _Frame(shape, ppu, translation_matrix(x0, y0))
    occ = np.zeros(shape, np.float32)
    for _i, win, sheath, axo, _x, _y in _myelin(frame, slab.fibres, profile, slab.bundle_lookup):
        occ[win] = np.maximum(occ[win], sheath + axo)
    return occ > 0.01


def _fill_neuropil(
    rng: np.random.Generator,
    box: tuple[float, float, float, float],
    occupied: np.ndarray,
    ppu: float,
) -> tuple[_Objects, _Objects]:
    """Mitochondria and unmyelinated processes in the free space of the section
    (``occupied``: the section's fibres, nuclei and lipofuscin at ``ppu`` over ``box``)."""
    x0, y0 = box[0], box[1]
    occ = occupied.copy()

    def free(cx: float, cy: float, r: float, _gap: float) -> bool:
        r0, r1 = int((cy - r - y0) * ppu), int(np.ceil((cy + r - y0) * ppu)) + 1
        c0, c1 = int((cx - r - x0) * ppu), int(np.ceil((cx + r - x0) * ppu)) + 1
        if r0 < 0 or c0 < 0 or r1 > occ.shape[0] or c1 > occ.shape[1]:
            return False
        if occ[r0:r1, c0:c1].any():
            return False
        occ[r0:r1, c0:c1] = True
        return True

    return place_neuropil(rng, box, free)


def make_slab(
    rng: np.random.Generator,
    bounds: tuple[float, float, float, float],
    tem_box: tuple[float, float, float, float],
    p: dict,
) -> Slab:
    """Draw the 3D tissue and cut the TEM section.

    Parameters
    ----------
    rng : numpy.random.Generator
    bounds : (xmin, ymin, xmax, ymax)
        Tissue region (um, tissue frame) the confocal field can show.
    tem_box : (xmin, ymin, xmax, ymax)
        Tissue region (um) the distorted TEM field can show; TEM-only objects
        (mitochondria, unmyelinated processes) are placed only there.
    p : dict
        Phantom parameters (:data:`clemalign.phantom.DEFAULT_ANALOGY_PARAMS`), with the
        realistic model's physics under ``p["realistic"]``.

    Returns
    -------
    Slab
    """
    q = p["realistic"]
    x0, y0, x1, y1 = bounds
    noise = {
        "neuropil": ValueNoise(rng, bounds, (0.4, 0.15, 0.06, 0.025)),
        "membrane": ValueNoise(rng, bounds, (0.5, 0.25), (0.6, 0.4)),
        "fine": ValueNoise(rng, bounds, (0.05, 0.02)),
        "chromatin": ValueNoise(rng, bounds, (0.5, 0.2), (0.6, 0.4)),
        "domain_x": ValueNoise(rng, bounds, (8.0, 3.0)),
        "domain_y": ValueNoise(rng, bounds, (8.0, 3.0)),
        "background": ValueNoise(rng, bounds, (q["background"]["scale_um"],)),
        "neuropil_stain": ValueNoise(rng, bounds, (1.5, 0.6), (0.6, 0.4)),
        "tem_stain": ValueNoise(rng, bounds, (10.0, 4.0), (0.7, 0.3)),
        "tem_thickness": ValueNoise(rng, bounds, (12.0,)),
    }
    n_bundles = int(rng.integers(q["bundles"][0], q["bundles"][1] + 1))
    seeds = rng.uniform((x0, y0), (x1, y1), size=(n_bundles, 2))
    nuclei, nz, nc, clumps = _make_nuclei(rng, bounds, tem_box, q)
    lipo3d, droplet = _make_lipofuscin(rng, bounds, nuclei, nz, q)
    slab = Slab(None, seeds, nz, nc, nuclei, clumps, lipo3d, droplet, None, noise)
    slab.fibres = _make_fibres(rng, bounds, slab, p, q)
    tem_profile = _Profile("box", q["tem_section_um"])
    sec_nuclei, sec_clumps, sec_lipo, sec_droplet = _section_objects(slab, tem_profile.reach)
    occ_ppu = 20.0
    occupied = _section_fibre_mask(slab, tem_box, occ_ppu, tem_profile)
    occ_frame = _Frame(occupied.shape, occ_ppu, translation_matrix(tem_box[0], tem_box[1]))
    mask = occupied.astype(np.float32)
    for objs in (sec_nuclei, sec_lipo):
        for i, win, x, y in _objects_in(occ_frame, objs, pad=0.05):
            inside = ((x - objs.cx[i]) / (objs.a[i] * 1.1)) ** 2 + (
                (y - objs.cy[i]) / (objs.b[i] * 1.1)
            ) ** 2 < 1.3
            mask[win] = np.maximum(mask[win], inside)
    mito, procs = _fill_neuropil(rng, tem_box, mask > 0, occ_ppu)
    empty = _Objects(*(np.zeros(0),) * 5, np.zeros((0, 0, 2)))
    slab.section = Tissue(
        bounds,
        empty,
        np.zeros(0),
        np.zeros(0),
        np.zeros(0, bool),
        sec_nuclei,
        sec_clumps,
        mito,
        sec_lipo,
        sec_droplet,
        np.arange(len(sec_lipo)),
        procs,
        noise,
    )
    return slab


# ------------------------------------------------------------------------ rendering


def _fibre_windows(frame: _Frame, fibres: Fibres, reach_z: float, chunk_um: float = 3.0):
    """Pixel windows where each fibre can be seen, in chunks along its axis.

    A fibre is visible where its axis is within ``reach_z`` (plus its radius) of z = 0.
    Long visible stretches (fibres near the plane) are cut in chunks so that windows
    stay small; a pixel belongs to the chunk holding its projection on the axis.

    Yields
    ------
    i, window, x, y
        Fibre index, (rows, cols) slices, tissue coordinates of the window's pixels
        (x, y masked to the chunk: pixels of other chunks are NaN).
    """
    bx0, by0, bx1, by1 = frame_bounds = _frame_tissue_bounds(frame)
    centre = np.array([(bx0 + bx1) / 2, (by0 + by1) / 2])
    half_diag = 0.5 * np.hypot(bx1 - bx0, by1 - by0)
    for i in range(len(fibres)):
        p, v, r = fibres.p[i], fibres.v[i], fibres.r_out[i]
        sin_t = np.hypot(v[0], v[1])
        if sin_t < 1e-6:
            segs = [(p[:2], p[:2])]
            az = None
        else:
            az = v[:2] / sin_t
            cos_t = abs(v[2])
            lim = np.dot(centre - p[:2], az)
            if cos_t > 1e-6:
                sgn = np.sign(v[2])
                u_a = (-reach_z - p[2]) * sin_t / v[2] - r / cos_t * sgn
                u_b = (reach_z - p[2]) * sin_t / v[2] + r / cos_t * sgn
                u0, u1 = sorted((u_a, u_b))
            else:
                if abs(p[2]) > reach_z + r:
                    continue
                u0, u1 = -np.inf, np.inf
            u0, u1 = max(u0, lim - half_diag - r), min(u1, lim + half_diag + r)
            if u1 <= u0:
                continue
            n_chunks = max(1, int(np.ceil((u1 - u0) / chunk_um)))
            edges = np.linspace(u0, u1, n_chunks + 1)
            segs = [(p[:2] + edges[k] * az, p[:2] + edges[k + 1] * az) for k in range(n_chunks)]
        for k, (a, b) in enumerate(segs):
            box = (
                min(a[0], b[0]) - r,
                min(a[1], b[1]) - r,
                max(a[0], b[0]) + r,
                max(a[1], b[1]) + r,
            )
            if box[2] < frame_bounds[0] or box[0] > frame_bounds[2]:
                continue
            if box[3] < frame_bounds[1] or box[1] > frame_bounds[3]:
                continue
            win = frame.window(box)
            if win is None:
                continue
            x, y = frame.block(*win)
            if az is not None and len(segs) > 1:
                u = (x - p[0]) * az[0] + (y - p[1]) * az[1]
                lo = -np.inf if k == 0 else np.dot(a - p[:2], az)
                hi = np.inf if k == len(segs) - 1 else np.dot(b - p[:2], az)
                outside = (u < lo) | (u >= hi)
                if outside.all():
                    continue
                x = np.where(outside, np.nan, x)
                y = np.where(outside, np.nan, y)
            yield i, win, x, y


def _frame_tissue_bounds(frame: _Frame) -> tuple[float, float, float, float]:
    h, w = frame.shape[0] / frame.ppu, frame.shape[1] / frame.ppu
    y0 = frame.row0 / frame.ppu
    corners = np.array([[0, y0], [w, y0], [0, y0 + h], [w, y0 + h]])
    pts = corners @ frame.m[:2, :2].T + frame.m[:2, 2]
    reach = frame.warp_reach
    return (*(pts.min(0) - reach), *(pts.max(0) + reach))


def _myelin(frame: _Frame, fibres: Fibres, profile: _Profile, bundle_of):
    """Per fibre window: weight of myelin (sheath) and of axoplasm along the profile,
    within the fibre's bundle domain (``bundle_of(x, y)``)."""
    for i, win, x, y in _fibre_windows(frame, fibres, profile.reach):
        qx, qy = x - fibres.p[i, 0], y - fibres.p[i, 1]
        r = fibres.r_out[i]
        z1, z2 = _tube_interval(qx, qy, fibres.p[i, 2], fibres.v[i], r)
        outer = profile.integral(z1, z2)
        z1, z2 = _tube_interval(qx, qy, fibres.p[i, 2], fibres.v[i], r * fibres.g_ratio[i])
        inner = profile.integral(z1, z2)
        valid = np.isfinite(x) & (bundle_of(x, y) == fibres.bundle[i])
        yield i, win, np.where(valid, outer - inner, 0.0), np.where(valid, inner, 0.0), x, y


def _render_tem_strip_slab(slab: Slab, frame: _Frame, profile: _Profile) -> np.ndarray:
    t = slab.section
    img = _tem_background(t, frame)
    _paint_processes(img, t, frame)
    _paint_mito(img, t, frame)
    nz = slab.noise
    xt, yt = frame.block(slice(0, frame.shape[0]), slice(0, frame.shape[1]))
    fine, grain = nz["fine"](xt, yt), nz["neuropil"](xt, yt)
    for _i, win, sheath, axo, _x, _y in _myelin(frame, slab.fibres, profile, slab.bundle_lookup):
        _paint(img, win, sheath + axo, 0.12 + 0.06 * (fine[win] - 0.5))
        _paint(img, win, axo, 0.77 + 0.07 * (grain[win] - 0.5))
    _paint_nuclei(img, t, frame)  # straight fibres cannot bend around nuclei: covered
    _paint_lipo(img, t, frame)
    return img


def render_tem(
    slab: Slab,
    shape: tuple[int, int],
    ppu: float,
    warp,
    warp_reach_um: float,
    rng: np.random.Generator,
    p: dict,
) -> np.ndarray:
    """Render the TEM image of the section.

    Parameters
    ----------
    slab : Slab
    shape : (int, int)
        TEM image (rows, cols).
    ppu : float
        TEM sampling, px/um.
    warp : SectionWarp
        The section's distortion: the pixel at TEM ``x`` um shows tissue ``x + w(x)``.
    warp_reach_um : float
        Largest displacement of ``warp`` (pads the object windows).
    rng : numpy.random.Generator
    p : dict
        Phantom parameters (``rows_per_tile``, ``tem_noise``, ``realistic``).

    Returns
    -------
    ndarray of uint8, shape ``shape``
        Rendered in strips of ``rows_per_tile`` rows, so any sampling fits in memory.
    """
    q = p["realistic"]
    profile = _Profile("box", q["tem_section_um"])
    chatter_dir = rng.uniform(0, 2 * np.pi)
    chatter_period = rng.uniform(*q["chatter_period_um"])
    chatter_phase = rng.uniform(0, 2 * np.pi)
    nz = slab.noise

    def shade(strip: np.ndarray, frame: _Frame, _r0: int, _r1: int, inner: slice) -> np.ndarray:
        """Optical density scales with stain uptake and section thickness (knife chatter)."""
        x, y = frame.block(inner, slice(0, shape[1]))
        stain = 1.0 + q["tem_stain_variation"] * 2 * (nz["tem_stain"](x, y) - 0.5)
        along = x * np.cos(chatter_dir) + y * np.sin(chatter_dir)
        thick = 1.0 + q["tem_thickness_variation"] * (
            (nz["tem_thickness"](x, y) - 0.5)
            + 0.5 * np.sin(2 * np.pi * along / chatter_period + chatter_phase)
        )
        return np.clip(strip, 0.02, 1.0) ** (stain * thick)

    return render_strips(
        shape,
        ppu,
        int(p["rows_per_tile"]),
        lambda row0, rows: _Frame(
            (rows, shape[1]), ppu, np.eye(3), row0, warp, warp_reach_um
        ).cache(),
        lambda frame: _render_tem_strip_slab(slab, frame, profile),
        shade,
        rng,
        p["tem_noise"],
    )


def render_confocal(
    slab: Slab,
    shape: tuple[int, int],
    ppu: float,
    to_tissue: np.ndarray,
    rng: np.random.Generator,
    p: dict,
) -> np.ndarray:
    """Render the confocal RGB image of the slab.

    Green: myelin stain integrated through the axial PSF (closed form), nuclei
    displacing it, weak neuropil stain, lipofuscin bleed-through, out-of-focus haze and a
    slowly varying background; red: lipofuscin; blue: DAPI. Lateral PSF, chromatic
    offsets of red and blue, Poisson-Gaussian detector.

    Parameters
    ----------
    slab : Slab
    shape : (int, int)
        Confocal image (rows, cols).
    ppu : float
        Confocal sampling, px/um.
    to_tissue : ndarray, shape (3, 3)
        Confocal um -> tissue um (the inverse of the tissue -> confocal affine).
    rng : numpy.random.Generator
    p : dict
        Phantom parameters (``channel_offset_um``, ``read_noise``, ``realistic``).

    Returns
    -------
    ndarray of uint8, shape (rows, cols, 3)
    """
    q = p["realistic"]
    sup = 2
    fshape = (shape[0] * sup, shape[1] * sup)
    channels = _confocal_signals(slab, _Frame(fshape, ppu * sup, to_tissue).cache(), q)
    return confocal_detector(
        rng,
        channels,
        sup,
        shape,
        q["lateral_fwhm_um"] / 2.3548 * ppu * sup,
        p["channel_offset_um"] * ppu * sup,
        q["photons"],
        p["read_noise"],
    )


def render_confocal_green_in_tem_frame(
    slab: Slab,
    shape: tuple[int, int],
    ppu: float,
    warp: SectionWarp,
    p: dict,
    *,
    fibre_stain: float | None = None,
) -> np.ndarray:
    """The confocal's expected green signal on the TEM field, through the distortion.

    What a perfect prediction of the confocal from the TEM would be: the TEM pixel at
    ``x`` (um) shows the tissue at ``x + w(x)``, and this image shows there the
    confocal's green signal of that tissue (same optics as :func:`render_confocal`),
    without detector noise or chromatic offset. For benchmarks (what registration could
    do given an exact analogy), never an input of the methods.

    Parameters
    ----------
    slab : Slab
    shape : (int, int)
        Output (rows, cols) over the TEM field.
    ppu : float
        Output sampling, px/um (TEM frame).
    warp : SectionWarp
        The section's distortion (as given to :func:`render_tem`).
    p : dict
        Phantom parameters (``realistic``).
    fibre_stain : float, optional
        The same dye uptake for every fibre instead of each fibre's own: the best a
        predictor that knew the whole 3D tissue but not each fibre's uptake could draw.

    Returns
    -------
    ndarray of float32, shape ``shape``
        Expected signal (1.0 = a full myelin sheath in focus, plus haze and background).
    """
    q = p["realistic"]
    sup = 2
    fshape = (shape[0] * sup, shape[1] * sup)
    reach = warp_reach_um(warp, (shape[1] / ppu, shape[0] / ppu))
    frame = _Frame(fshape, ppu * sup, np.eye(3), warp=warp, warp_reach_um=reach).cache()
    stain = None if fibre_stain is None else np.full(len(slab.fibres), float(fibre_stain))
    green = _confocal_signals(slab, frame, q, stain)["green"].astype(np.float32)
    sigma = q["lateral_fwhm_um"] / 2.3548 * ppu * sup
    return block_mean(ndimage.gaussian_filter(green, sigma), sup)[: shape[0], : shape[1]]


def _confocal_signals(
    slab: Slab, frame: _Frame, q: dict, stain: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """Expected red, green and blue signals on ``frame`` (before the lateral PSF);
    ``stain``: each fibre's dye uptake (default: the slab's)."""
    stain = slab.fibres.stain if stain is None else stain
    fshape = frame.shape
    profile = _Profile("gauss", q["axial_fwhm_um"])
    xt, yt = frame.block(slice(0, fshape[0]), slice(0, fshape[1]))
    nz = slab.noise
    myelin = np.zeros(fshape, np.float32)
    axoplasm = np.zeros(fshape, np.float32)
    for i, win, sheath, axo, _x, _y in _myelin(frame, slab.fibres, profile, slab.bundle_lookup):
        myelin[win] += stain[i] * sheath
        axoplasm[win] += axo
    nucleus = np.zeros(fshape, np.float32)
    dapi = np.zeros(fshape, np.float32)
    n = slab.nuclei_xy
    for i, win, x, y in _objects_in(frame, n):
        _d, rho = ellipse_distance(
            x, y, (n.cx[i], n.cy[i]), (n.a[i], n.b[i]), n.angle[i], n.wobble[i]
        )
        inside = profile.integral(*_ellipsoid_interval(rho, slab.nuclei_z[i], slab.nuclei_c[i]))
        core = profile.integral(
            *_ellipsoid_interval(rho / 0.88, slab.nuclei_z[i], 0.88 * slab.nuclei_c[i])
        )
        rim = (inside - core) * (nz["chromatin"](x, y) > 0.42)
        clump = np.zeros_like(inside)
        for cx, cy, cz, r in slab.clumps3d[i]:
            rr = np.hypot(x - cx, y - cy) / r
            clump += profile.integral(*_ellipsoid_interval(rr, cz, r))
        nucleus[win] += inside
        dapi[win] += 0.3 * inside + 0.7 * np.minimum(rim + clump, inside)
    lipo = np.zeros(fshape, np.float32)
    lp = slab.lipo3d
    sph = _Objects(
        lp[:, 0], lp[:, 1], lp[:, 3], lp[:, 3], np.zeros(len(lp)), np.zeros((len(lp), 0, 2))
    )
    for i, win, x, y in _objects_in(frame, sph):
        rr = np.hypot(x - lp[i, 0], y - lp[i, 1]) / lp[i, 3]
        lipo[win] += profile.integral(*_ellipsoid_interval(rr, lp[i, 2], lp[i, 3]))
    nucleus = np.clip(nucleus, 0, 1)
    free = np.clip(1.0 - nucleus - axoplasm, 0, 1)
    neuropil = q["neuropil_stain"] * free * (0.6 + 0.8 * nz["neuropil_stain"](xt, yt))
    myelin *= 1.0 - nucleus  # fibres are displaced by the nuclei they would cross
    k = q["stain_saturation"]  # shape of the dye's saturation; a full sheath gives 1
    in_focus = (
        (1.0 - np.exp(-k * myelin)) / (1.0 - np.exp(-k)) + neuropil + 0.35 * np.clip(lipo, 0, 1)
    )
    sigma_haze = q["haze"]["sigma_um"] * frame.ppu
    haze = q["haze"]["fraction"] * ndimage.gaussian_filter(in_focus, sigma_haze, mode="reflect")
    bg = q["background"]
    background = bg["level"] + bg["variation"] * 2 * (nz["background"](xt, yt) - 0.5)
    green = in_focus + haze + background
    red = 0.04 + np.clip(lipo, 0, 1)
    blue = np.clip(dapi, 0, 1) + 0.02
    return {"red": red, "green": green, "blue": blue}


# ------------------------------------------------------------------- distortion


@dataclass
class SectionWarp:
    """Distortion of the TEM section: the TEM pixel at ``x`` (um) shows tissue at
    ``x + w(x)``. Compression along the cutting direction (affine, plus a part uneven
    across the knife edge) and a sum of low-frequency plane waves (wrinkles, swelling)."""

    centre: np.ndarray
    cut: np.ndarray  # unit cutting direction
    compression: float
    unevenness: float  # relative change of compression per um across the knife edge
    waves_k: np.ndarray  # (m, 2) wave vectors, rad/um
    waves_amp: np.ndarray  # (m, 2) displacement amplitudes, um
    waves_phase: np.ndarray
    scale: float = 1.0  # on the non-affine parts, set to reach the target RMS

    def __call__(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        dx, dy = x - self.centre[0], y - self.centre[1]
        along = dx * self.cut[0] + dy * self.cut[1]
        across = -dx * self.cut[1] + dy * self.cut[0]
        factor = self.compression / (1.0 - self.compression)
        stretch = along * (factor + self.scale * self.unevenness * across)
        wx = stretch * self.cut[0]
        wy = stretch * self.cut[1]
        for k, amp, ph in zip(self.waves_k, self.waves_amp, self.waves_phase, strict=True):
            s = self.scale * np.sin(k[0] * x + k[1] * y + ph)
            wx = wx + amp[0] * s
            wy = wy + amp[1] * s
        return wx, wy


def make_warp(rng: np.random.Generator, field_um: tuple[float, float], q: dict) -> SectionWarp:
    """Draw the distortion of the TEM section.

    Parameters
    ----------
    rng : numpy.random.Generator
    field_um : (float, float)
        TEM field (width, height), um.
    q : dict
        The realistic model's parameters (``compression``, ``nonrigid_rms_um``,
        ``warp_wavelength_um``).

    Returns
    -------
    SectionWarp
        Scaled so that what no affine explains has an RMS over the field drawn
        uniformly in ``nonrigid_rms_um``.
    """
    w, h = field_um
    centre = np.array([w / 2, h / 2])
    ang = rng.uniform(0, 2 * np.pi)
    m = 6
    lam = rng.uniform(*q["warp_wavelength_um"], m)
    dirs = rng.uniform(0, 2 * np.pi, m)
    kvec = (2 * np.pi / lam)[:, None] * np.stack([np.cos(dirs), np.sin(dirs)], 1)
    warp = SectionWarp(
        centre,
        np.array([np.cos(ang), np.sin(ang)]),
        rng.uniform(*q["compression"]),
        rng.uniform(-0.3, 0.3) / max(w, h),
        kvec,
        rng.normal(0, 1, (m, 2)) * lam[:, None] / lam.max(),
        rng.uniform(0, 2 * np.pi, m),
    )
    target = rng.uniform(*q["nonrigid_rms_um"])
    gx, gy = np.meshgrid(np.linspace(0, w, 41), np.linspace(0, h, 41))
    pts = np.stack([gx.ravel(), gy.ravel()], 1)

    dx, dy = warp(pts[:, 0], pts[:, 1])  # at scale 1
    moved = pts + np.stack([dx, dy], 1)
    unit = np.sqrt(np.mean(np.sum((moved - apply(fit_affine(pts, moved), pts)) ** 2, axis=1)))
    warp.scale = target / unit  # the non-affine part is linear in the scale
    return warp


def invert_warp(warp: SectionWarp, tissue_xy: np.ndarray, iterations: int = 50) -> np.ndarray:
    """TEM positions (N, 2) um of tissue points: solve ``x + w(x) = s`` by fixed point."""
    s = np.asarray(tissue_xy, float).reshape(-1, 2)
    x = s.copy()
    for _ in range(iterations):
        dx, dy = warp(x[:, 0], x[:, 1])
        x = s - np.stack([dx, dy], 1)
    return x


def warp_reach_um(warp: SectionWarp, field_um: tuple[float, float]) -> float:
    """Largest displacement (um) over the field and a 1 um margin."""
    w, h = field_um
    gx, gy = np.meshgrid(np.linspace(-1, w + 1, 30), np.linspace(-1, h + 1, 30))
    dx, dy = warp(gx, gy)
    return float(np.max(np.hypot(dx, dy))) + 0.05


def landmark_candidates(
    slab: Slab,
    edge_box: tuple[float, float, float, float],
    wanted: int,
    last_resort: bool = False,
) -> np.ndarray:
    """Tissue points (N, 2) in the section plane that both modalities show as the same
    centre, most salient first: fibres cut across or obliquely (the centre of their
    ellipse), nuclei cut near their equator, lipofuscin in the section; then, if fewer
    than ``wanted``, smaller and more oblique fibre cuts. With ``last_resort`` (a field
    of fibres in the plane), any fibre cut and any lipofuscin section as well."""
    f = slab.fibres
    crossing = np.abs(f.p[:, 2]) < 1e-6  # anchored at their z = 0 crossing
    r_in = f.r_out * f.g_ratio
    tiers = [
        f.p[crossing & (np.abs(f.v[:, 2]) > 0.5) & (r_in > 0.25), :2],
        np.column_stack([slab.nuclei_xy.cx, slab.nuclei_xy.cy])[
            np.abs(slab.nuclei_z) < 0.8 * slab.nuclei_c
        ],
        np.column_stack([slab.section.lipo.cx, slab.section.lipo.cy])[slab.section.lipo.a > 0.15],
        f.p[
            crossing & (np.abs(f.v[:, 2]) > 0.3) & ~((np.abs(f.v[:, 2]) > 0.5) & (r_in > 0.25)), :2
        ],
    ]
    if last_resort:
        tiers.append(f.p[crossing & (np.abs(f.v[:, 2]) <= 0.3), :2])
        tiers.append(np.column_stack([slab.section.lipo.cx, slab.section.lipo.cy]))
    x0, y0, x1, y1 = edge_box
    out = np.zeros((0, 2))
    for tier in tiers:
        keep = (tier[:, 0] > x0) & (tier[:, 0] < x1) & (tier[:, 1] > y0) & (tier[:, 1] < y1)
        out = np.concatenate([out, tier[keep]])
        if len(out) >= wanted and not last_resort:
            break
    return np.unique(out, axis=0) if last_resort else out
