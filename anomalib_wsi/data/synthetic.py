"""Synthetic H&E-like whole-slide images with Camelyon16-style tumour annotations.

The demo and most tests run on slides made here, so that a fresh clone needs no download. A slide is described
as vectors (tissue islands, tumour lesions, ``_2`` exclusions as shapely polygons; nuclei on hashed jittered
lattices) and each pyramidal TIFF tile is rendered from that description on demand: the whole level-0 image is
never in memory, a 20k x 20k px slide takes well under a minute and the pixels depend only on the seed.

What a slide looks like:

- near-white background (about 240 gray, low saturation) with slight grain;
- several blobby tissue islands: pink eosin stroma with fibres, elongated purple fibroblast nuclei and small dark
  lymphocytes;
- on tumour slides, 1-3 lesions inside tissue: 2-3x as many nuclei, twice their area, darker, rounder and more
  irregular; at least one ``_2`` region inside a lesion is rendered as normal tissue, as in Camelyon16.

Files are tiled (256 px), JPEG-compressed BigTIFFs with reduced levels (``subfiletype=1``, downsample 2 per level
down to about 1-2k px) and ``resolution`` in pixels per centimetre, so openslide opens them as ``generic-tiff``
and reports ``openslide.mpp-x``. Colour comes from a Beer-Lambert mix of haematoxylin and eosin optical densities.

Example:
    >>> from anomalib_wsi.data.synthetic import synthesize_cohort      # doctest: +SKIP
    >>> cohort = synthesize_cohort("demo_data", n_slides=6, seed=0)
    >>> cohort.labels_csv, cohort.tumour_slide_ids
    (PosixPath('demo_data/labels.csv'), ['synth_000', 'synth_002', 'synth_004'])

Over 500 lines on purpose: the slide painter (tissue, nuclei, stain, pyramid) and the cohort writer share one set of
geometry and colour constants; split, each half would need the other's.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import re
import tempfile
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from shapely.geometry import Point, Polygon, box
from shapely.geometry.base import BaseGeometry
from shapely.ops import polylabel, unary_union

from anomalib_wsi.errors import WSIError

__all__ = [
    "SynthOptionError",
    "SyntheticCohort",
    "SyntheticSlide",
    "synthesize_cohort",
    "synthesize_slide",
]

logger = logging.getLogger(__name__)

#: RGB optical densities of haematoxylin and eosin (Macenko's reference stain vectors).
_H_OD = np.array([0.5626, 0.7201, 0.4062], np.float32)
_E_OD = np.array([0.2159, 0.8012, 0.5581], np.float32)

_TILE_PX = 256  # TIFF tile side
_BLOCK_W_PX = 1024  # width of the level-0 blocks rendered at once (a multiple of the tile side)
_TEXTURE_PERIODS = (1152, 1280, 1216, 1088)  # periodic textures: fibres (two directions), chromatin, grain
_TEXTURE_SCALE = 40.0  # int8 textures store std-1 noise times this
_IN_MEMORY_BYTES = 64 << 20  # reduced levels larger than this go to a temporary file, not to memory


class SynthOptionError(WSIError, ValueError):
    """An option of the synthetic-slide generator is out of range (size, mpp, number of slides)."""


@dataclass(frozen=True)
class _NucleusStyle:
    """One population of nuclei, laid on a jittered lattice (one candidate per lattice cell)."""

    stream: int  # distinguishes the hash streams of populations
    spacing_um: float  # lattice cell side
    presence: float  # probability that a cell holds a nucleus
    radius_um: tuple[float, float]  # range of the radius of a circle of the same area
    aspect: tuple[float, float]  # range of major / minor axis
    irregularity: float  # amplitude of the radial harmonics of the outline
    tumour: bool  # drawn where the centre is in tumour (True) or in normal tissue (False)


# Normal tissue: fibroblasts and a few lymphocytes (about 4e-3 nuclei per µm², 10 % nuclear area).
# Tumour: about 9e-3 nuclei per µm² (2.4x), twice the area each, rounder, irregular, darker (55 % nuclear area).
_FIBROBLAST = _NucleusStyle(1, 15.0, 0.75, (2.4, 3.6), (1.3, 2.6), 0.08, tumour=False)
_LYMPHOCYTE = _NucleusStyle(2, 30.0, 0.5, (2.1, 2.7), (1.0, 1.2), 0.05, tumour=False)
_TUMOUR_CELL = _NucleusStyle(3, 10.0, 0.92, (3.6, 5.2), (1.0, 1.5), 0.2, tumour=True)
_STYLES = (_FIBROBLAST, _LYMPHOCYTE, _TUMOUR_CELL)
#: Haematoxylin concentration of the nuclei of each population (the canvas values are scaled by it).
_NUCLEUS_H = {1: 0.9, 2: 1.2, 3: 1.45}
#: Farthest a nucleus outline reaches from its centre (half major axis with the outline's harmonics), in µm.
_NUCLEUS_REACH_UM = max(s.radius_um[1] * math.sqrt(s.aspect[1]) * (1 + 2 * s.irregularity) for s in _STYLES)


@dataclass
class SyntheticSlide:
    """A synthetic slide written to disk and the geometry it was rendered from.

    Attributes:
        path: the pyramidal TIFF.
        size_px: (width, height) of level 0.
        mpp: level-0 resolution in µm per pixel, as recorded in the file.
        tumour_polygons: lesion outlines (ASAP group ``_0``), level-0 pixels.
        exclusion_polygons: non-tumour regions inside lesions (ASAP group ``_2``), rendered as normal tissue.
        tissue_polygons: outlines of the tissue islands; everything else is background.
        annotation_path: the ASAP XML of a tumour slide, ``None`` for a normal slide.
        seed: the seed that made it; the same seed gives the same pixels.
        level_dimensions: (width, height) of each pyramid level.
    """

    path: Path
    size_px: tuple[int, int]
    mpp: float
    tumour_polygons: list[Polygon]
    exclusion_polygons: list[Polygon]
    tissue_polygons: list[Polygon]
    annotation_path: Path | None
    seed: int = 0
    level_dimensions: list[tuple[int, int]] = field(default_factory=list)

    @property
    def slide_id(self) -> str:
        """The file stem, the slide's id in tile tables and outputs."""
        return self.path.stem

    @property
    def is_tumour(self) -> bool:
        """Whether the slide carries tumour."""
        return bool(self.tumour_polygons)

    @property
    def tumour_region(self) -> BaseGeometry:
        """Tumour as rendered: the union of the lesions minus the ``_2`` exclusions (empty on normal slides)."""
        return unary_union(self.tumour_polygons).difference(unary_union(self.exclusion_polygons))

    @property
    def tissue_region(self) -> BaseGeometry:
        """The union of the tissue islands."""
        return unary_union(self.tissue_polygons)


@dataclass
class SyntheticCohort:
    """A folder of synthetic slides: ``slides/<id>.tif``, ``annotations/<id>.xml`` (tumour slides), ``labels.csv``.

    Attributes:
        root: the cohort folder.
        slides: slide files, sorted by id.
        annotations: ASAP XML of each tumour slide, by slide id.
        labels_csv: ``slide_id,label`` with labels ``tumor`` / ``normal``.
        tumour_slide_ids: ids of the slides with tumour, sorted.
        normal_slide_ids: ids of the slides without tumour, sorted.
        slide_details: the :class:`SyntheticSlide` of each slide (geometry in level-0 pixels), by slide id.
    """

    root: Path
    slides: list[Path]
    annotations: dict[str, Path]
    labels_csv: Path
    tumour_slide_ids: list[str]
    normal_slide_ids: list[str]
    slide_details: dict[str, SyntheticSlide] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------------------
# Hashing: reproducible random numbers per lattice cell, the same whichever block asks for them
# ---------------------------------------------------------------------------------------------------------------
def _mix32(x: np.ndarray) -> np.ndarray:
    """Chris Wellons' lowbias32 integer hash (uint32 in, uint32 out)."""
    x = x ^ (x >> np.uint32(16))
    x = x * np.uint32(0x21F0AAAD)
    x = x ^ (x >> np.uint32(15))
    x = x * np.uint32(0x735A2D97)
    return x ^ (x >> np.uint32(15))


def _cell_uniform(i: np.ndarray, j: np.ndarray, seed: int, stream: int, k: int) -> np.ndarray:
    """Uniform [0, 1) numbers for lattice cells (i, j), one independent stream per (seed, stream, k)."""
    key = _mix32(np.array([(seed * 0x9E3779B1 + stream * 0x85EBCA77 + k * 0xC2B2AE3D) & 0xFFFFFFFF], np.uint32))
    h = _mix32(i.astype(np.int64).astype(np.uint32) ^ key)
    h = _mix32(h ^ j.astype(np.int64).astype(np.uint32) * np.uint32(0x27D4EB2F))
    return (h >> np.uint32(8)).astype(np.float32) * np.float32(1.0 / (1 << 24))


# ---------------------------------------------------------------------------------------------------------------
# Vector description of a slide
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class _Description:
    """Everything that determines the pixels of a slide."""

    width: int
    height: int
    mpp: float
    seed: int
    islands: list[Polygon]
    tumours: list[Polygon]
    exclusions: list[Polygon]
    textures: list[np.ndarray]  # periodic textures, each tiled 2x2 so that any window up to the period is a slice
    modes: np.ndarray  # (n, 5) low-frequency Fourier modes: kx, ky, phase, amplitude, which field
    background_rgb: np.ndarray  # (3,) float32
    stain_e: float  # eosin concentration of stroma
    island_boxes: np.ndarray = field(init=False)
    stain_od: np.ndarray = field(default_factory=lambda: np.stack([_H_OD, _E_OD]))  # (2, 3): H and E, RGB OD

    def __post_init__(self) -> None:
        self.island_boxes = np.array([p.bounds for p in self.islands], np.float64).reshape(-1, 4)


def _blob(rng: np.random.Generator, cx: float, cy: float, radius: float, roughness: float, n: int = 160) -> Polygon:
    """A star-shaped blobby polygon (always simple) with vertices rounded to 0.1 px."""
    phi = np.linspace(0.0, 2 * math.pi, n, endpoint=False)
    log_r = np.zeros(n)
    for k in range(2, 8):
        log_r += roughness * rng.uniform(0.3, 1.0) / k**0.9 * np.cos(k * phi + rng.uniform(0, 2 * math.pi))
    r = np.exp(log_r - log_r.mean())
    elong, angle = rng.uniform(1.0, 1.5), rng.uniform(0, math.pi)
    x, y = radius * r * np.cos(phi) * math.sqrt(elong), radius * r * np.sin(phi) / math.sqrt(elong)
    ca, sa = math.cos(angle), math.sin(angle)
    xs, ys = cx + ca * x - sa * y, cy + sa * x + ca * y
    return Polygon(np.round(np.stack([xs, ys], 1), 1))


def _random_point_in(rng: np.random.Generator, region: BaseGeometry, tries: int = 200) -> Point | None:
    """A uniformly random point of ``region`` (rejection sampling in its bounding box), or None."""
    if region.is_empty:
        return None
    x0, y0, x1, y1 = region.bounds
    for _ in range(tries):
        p = Point(rng.uniform(x0, x1), rng.uniform(y0, y1))
        if region.contains(p):
            return p
    return None


def _place_blob(
    rng: np.random.Generator,
    container: Polygon,
    avoid: BaseGeometry,
    radius: float,
    roughness: float,
    attempts: int = 60,
) -> Polygon | None:
    """A blob of about ``radius`` inside ``container`` and clear of ``avoid``, shrinking on failures; or None."""
    for attempt in range(attempts):
        r = radius * 0.96**attempt
        region = container.buffer(-1.2 * r)
        if not avoid.is_empty:
            region = region.difference(avoid.buffer(1.3 * r))
        centre = _random_point_in(rng, region)
        if centre is None:
            continue
        blob = _blob(rng, centre.x, centre.y, r, roughness)
        if container.buffer(-0.02 * r).contains(blob) and not blob.intersects(avoid):
            return blob
    return None


def _central_blob(rng: np.random.Generator, container: Polygon) -> Polygon:
    """A blob around the pole of inaccessibility of ``container`` that surely fits (the last resort)."""
    centre = polylabel(container, tolerance=1.0)
    depth = container.exterior.distance(centre)
    blob = _blob(rng, centre.x, centre.y, 0.45 * depth, roughness=0.15)
    if container.contains(blob):
        return blob
    return Polygon(np.round(np.asarray(centre.buffer(0.5 * depth, 16).exterior.coords), 1))


def _periodic_texture(rng: np.random.Generator, period: int, kernel: np.ndarray) -> np.ndarray:
    """Filtered white noise that wraps around (period x period), tiled 2x2, int8 with std ``_TEXTURE_SCALE``."""
    noise = rng.standard_normal((period, period)).astype(np.float32)
    pad = max(kernel.shape)
    tex = cv2.filter2D(np.pad(noise, pad, mode="wrap"), -1, kernel)[pad:-pad, pad:-pad]
    tex = (tex - tex.mean()) / (tex.std() + 1e-6) * _TEXTURE_SCALE
    return np.tile(np.clip(np.round(tex), -127, 127).astype(np.int8), (2, 2))


def _line_kernel(length: int, angle_deg: float, width: float = 1.2) -> np.ndarray:
    """A blurred line segment: convolving noise with it gives fibres along ``angle_deg``."""
    size = length | 1
    kernel = np.zeros((size, size), np.float32)
    c = size // 2
    dx, dy = math.cos(math.radians(angle_deg)) * c, math.sin(math.radians(angle_deg)) * c
    cv2.line(kernel, (round(c - dx), round(c - dy)), (round(c + dx), round(c + dy)), 1.0, 1, cv2.LINE_AA)
    blurred = cv2.GaussianBlur(kernel, (0, 0), width)
    return blurred / blurred.sum()


def _describe(
    width: int,
    height: int,
    mpp: float,
    seed: int,
    tumour: bool,
    n_islands: int | None,
    n_lesions: int | None,
) -> _Description:
    """Draw the geometry and textures of one slide from its seed."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5E1DE]))
    side = min(width, height)
    n_islands = int(rng.integers(3, 6)) if n_islands is None else n_islands
    n_lesions = int(rng.integers(1, 4)) if n_lesions is None else n_lesions

    # tissue islands: the first is large (room for lesions), the others smaller; no overlaps, inside the slide
    frame = box(0.03 * width, 0.03 * height, 0.97 * width, 0.97 * height)
    islands: list[Polygon] = []
    occupied: BaseGeometry = Polygon()
    for index in range(n_islands):
        for attempt in range(60):
            shrink = 0.97**attempt
            radius = side * (rng.uniform(0.2, 0.27) if index == 0 else rng.uniform(0.08, 0.17)) * shrink
            cx, cy = rng.uniform(0, width), rng.uniform(0, height)
            blob = _blob(rng, cx, cy, radius, roughness=0.35)
            if frame.contains(blob) and not blob.buffer(0.02 * side).intersects(occupied):
                islands.append(blob)
                occupied = occupied.union(blob)
                break
    if not islands:  # a very elongated slide: one island in the middle
        islands.append(_blob(rng, width / 2, height / 2, 0.3 * side, roughness=0.2))

    tumours: list[Polygon] = []
    exclusions: list[Polygon] = []
    if tumour:
        by_area = sorted(islands, key=lambda p: -p.area)
        for index in range(n_lesions):
            island = by_area[index % len(by_area)]
            # 600-2500 µm across (later lesions 400-1600 µm) when the island has room, else up to ~60 % of it
            diameter_um = rng.uniform(600, 2500) if index == 0 else rng.uniform(400, 1600)
            room = math.sqrt(island.area / math.pi)
            radius = min(diameter_um / mpp / 2, room * rng.uniform(0.35, 0.6))
            lesion = _place_blob(rng, island, unary_union(tumours), radius, roughness=0.45)
            if lesion is not None:
                tumours.append(lesion)
        if not tumours:
            tumours.append(_central_blob(rng, by_area[0]))
        # a _2 region inside the first lesion (and sometimes one in another), rendered as normal tissue
        for index, lesion in enumerate(tumours):
            if index > 0 and rng.uniform() < 0.5:
                continue
            radius = math.sqrt(lesion.area / math.pi) * rng.uniform(0.18, 0.3)
            hole = _place_blob(rng, lesion, Polygon(), radius, roughness=0.3)
            if hole is None and index == 0:
                hole = _central_blob(rng, lesion)
            if hole is not None:
                exclusions.append(hole)

    # textures: two fibre directions, chromatin speckle, pixel grain (periods differ so no pattern repeats)
    fibre_len = max(5, round(12 / mpp))
    p_fa, p_fb, p_chroma, p_grain = _TEXTURE_PERIODS
    angle = rng.uniform(0, 180)
    textures = [
        _periodic_texture(rng, p_fa, _line_kernel(fibre_len, angle)),
        _periodic_texture(rng, p_fb, _line_kernel(fibre_len, angle + rng.uniform(50, 130))),
        _periodic_texture(rng, p_chroma, cv2.getGaussianKernel(5, 0.8) @ cv2.getGaussianKernel(5, 0.8).T),
        _periodic_texture(rng, p_grain, np.ones((1, 1), np.float32)),
    ]
    # low-frequency fields (wavelengths 0.5-3 mm): 0 = stain strength, 1 = fibre direction mix
    n_modes = 6
    wavelength_px = rng.uniform(500, 3000, (2 * n_modes,)) / mpp
    theta = rng.uniform(0, 2 * math.pi, (2 * n_modes,))
    modes = np.stack(
        [
            2 * math.pi / wavelength_px * np.cos(theta),
            2 * math.pi / wavelength_px * np.sin(theta),
            rng.uniform(0, 2 * math.pi, (2 * n_modes,)),
            rng.uniform(0.5, 1.0, (2 * n_modes,)) / math.sqrt(n_modes),
            np.repeat([0.0, 1.0], n_modes),
        ],
        1,
    )
    background = np.array([242, 241, 243], np.float32) + rng.uniform(-2.5, 2.5, 3).astype(np.float32)
    return _Description(
        width=width,
        height=height,
        mpp=mpp,
        seed=seed,
        islands=islands,
        tumours=tumours,
        exclusions=exclusions,
        textures=textures,
        modes=modes,
        background_rgb=background,
        stain_e=float(rng.uniform(0.42, 0.55)),
    )


# ---------------------------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------------------------
def _fill(canvas: np.ndarray, polygons: list[Polygon], x0: int, y0: int, value: int) -> None:
    """Rasterise polygons (level-0 px, pixel (i, j) covers [i, i+1)) into ``canvas`` whose top-left is (x0, y0)."""
    h, w = canvas.shape[:2]
    for polygon in polygons:
        bx0, by0, bx1, by1 = polygon.bounds
        if bx1 < x0 or by1 < y0 or bx0 > x0 + w or by0 > y0 + h:
            continue
        xy = np.asarray(polygon.exterior.coords)[:-1]
        pts = np.round((xy - (x0 + 0.5, y0 + 0.5)) * 8).astype(np.int32)
        cv2.fillPoly(canvas, [pts], value, cv2.LINE_AA, shift=3)


def _draw_nuclei(
    desc: _Description, style: _NucleusStyle, ex0: int, ey0: int, tissue: np.ndarray, tumour: np.ndarray
) -> np.ndarray:
    """Draw one nucleus population into a uint8 canvas (255 = nucleus) covering the extended block."""
    h, w = tissue.shape
    canvas = np.zeros((h, w), np.uint8)
    s = style.spacing_um / desc.mpp
    i = np.arange(math.floor(ex0 / s), math.ceil((ex0 + w) / s))
    j = np.arange(math.floor(ey0 / s), math.ceil((ey0 + h) / s))
    ii, jj = (a.ravel() for a in np.meshgrid(i, j))

    def u(k: int) -> np.ndarray:
        return _cell_uniform(ii, jj, desc.seed, style.stream, k)

    cx, cy = (ii + u(1)) * s, (jj + u(2)) * s
    px, py = np.floor(cx).astype(np.int64) - ex0, np.floor(cy).astype(np.int64) - ey0
    keep = (u(0) < style.presence) & (px >= 0) & (py >= 0) & (px < w) & (py < h)
    idx = np.flatnonzero(keep)
    keep[idx] = tissue[py[idx], px[idx]] > 127
    idx = np.flatnonzero(keep)
    keep[idx] = (tumour[py[idx], px[idx]] > 127) == style.tumour
    if not keep.any():
        return canvas
    ii, jj, cx, cy = ii[keep], jj[keep], cx[keep], cy[keep]
    lo, hi = style.radius_um
    radius = (lo + (hi - lo) * u(3)) / desc.mpp
    alo, ahi = style.aspect
    aspect = alo + (ahi - alo) * u(4)
    angle = u(5) * math.pi
    n_vertices = 16
    phi = np.linspace(0, 2 * math.pi, n_vertices, endpoint=False)[None, :]
    r = np.ones((len(ii), n_vertices), np.float32)
    for k, harmonic in enumerate((2, 3, 5)):
        amp = style.irregularity * (0.4 + u(6 + k))[:, None] / harmonic**0.5
        r += amp * np.cos(harmonic * phi + 2 * math.pi * u(9 + k)[:, None])
    major, minor = (radius * np.sqrt(aspect))[:, None], (radius / np.sqrt(aspect))[:, None]
    lx, ly = major * r * np.cos(phi), minor * r * np.sin(phi)
    ca, sa = np.cos(angle)[:, None], np.sin(angle)[:, None]
    vx = cx[:, None] + ca * lx - sa * ly - ex0 - 0.5
    vy = cy[:, None] + sa * lx + ca * ly - ey0 - 0.5
    pts = np.round(np.stack([vx, vy], -1) * 8).astype(np.int32)
    # fillPoly fills overlapping contours even-odd: nuclei three cells apart never overlap, draw such sets at once
    group = (ii % 3) * 3 + (jj % 3)
    for g in range(9):
        members = np.flatnonzero(group == g)
        if len(members):
            cv2.fillPoly(canvas, list(pts[members]), 255, cv2.LINE_AA, shift=3)
    return canvas


def _texture(desc: _Description, index: int, x0: int, y0: int, w: int, h: int) -> np.ndarray:
    """A window of a periodic texture at level-0 (x0, y0), float32 (h, w)."""
    period = _TEXTURE_PERIODS[index]
    ox, oy = x0 % period, y0 % period
    return desc.textures[index][oy : oy + h, ox : ox + w].astype(np.float32) * np.float32(1 / _TEXTURE_SCALE)


def _low_frequency(desc: _Description, which: int, x0: int, y0: int, w: int, h: int) -> np.ndarray:
    """A smooth field (wavelengths of millimetres) in about [-1, 1], evaluated every 8 px and interpolated."""
    step = 8
    gx = x0 + step * np.arange(math.ceil(w / step)) + step / 2
    gy = y0 + step * np.arange(math.ceil(h / step)) + step / 2
    out = np.zeros((len(gy), len(gx)), np.float32)
    for kx, ky, phase, amp, kind in desc.modes:
        if int(kind) == which:
            out += amp * np.cos(ky * gy[:, None] + kx * gx[None, :] + phase).astype(np.float32)
    return cv2.resize(out, (w, h), interpolation=cv2.INTER_LINEAR)


def _render_block(desc: _Description, x0: int, y0: int, w: int, h: int) -> np.ndarray:
    """Render the level-0 region (x0, y0, w, h) as uint8 RGB (h, w, 3); w and h multiples of 8."""
    grain = _texture(desc, 3, x0, y0, w, h)
    margin = math.ceil(_NUCLEUS_REACH_UM / desc.mpp) + 2  # nuclei centred this far outside can reach in
    ex0, ey0, ew, eh = x0 - margin, y0 - margin, w + 2 * margin, h + 2 * margin
    boxes = desc.island_boxes
    touches = (boxes[:, 0] < ex0 + ew) & (boxes[:, 2] > ex0) & (boxes[:, 1] < ey0 + eh) & (boxes[:, 3] > ey0)
    if not touches.any():
        return cv2.merge([cv2.convertScaleAbs(grain, alpha=1.6, beta=float(b)) for b in desc.background_rgb])

    tissue = np.zeros((eh, ew), np.uint8)
    _fill(tissue, desc.islands, ex0, ey0, 255)
    tumour = np.zeros((eh, ew), np.uint8)
    _fill(tumour, desc.tumours, ex0, ey0, 255)
    _fill(tumour, desc.exclusions, ex0, ey0, 0)
    nuclei = [_draw_nuclei(desc, style, ex0, ey0, tissue, tumour) for style in _STYLES]

    crop = (slice(margin, margin + h), slice(margin, margin + w))
    t = tissue[crop].astype(np.float32) * np.float32(1 / 255)
    u = tumour[crop].astype(np.float32) * np.float32(1 / 255)
    chroma = _texture(desc, 2, x0, y0, w, h)
    h_nuclei = np.zeros((h, w), np.float32)
    n_mask = np.zeros((h, w), np.float32)
    for style, canvas in zip(_STYLES, nuclei, strict=True):
        m = canvas[crop].astype(np.float32) * np.float32(_NUCLEUS_H[style.stream] / 255)
        np.maximum(n_mask, m, out=n_mask)
        h_nuclei += m
    n_mask = np.minimum(n_mask, 1)
    h_nuclei *= 1 + 0.18 * np.clip(chroma, -2.5, 2.5)

    mix = 0.5 + 0.5 * np.tanh(2 * _low_frequency(desc, 1, x0, y0, w, h))
    fibre = mix * _texture(desc, 0, x0, y0, w, h) + (1 - mix) * _texture(desc, 1, x0, y0, w, h)
    ts = t * (1 + 0.18 * _low_frequency(desc, 0, x0, y0, w, h))  # tissue times a slowly varying stain strength
    # stroma: fibrous eosin with pale gaps; tumour: denser, purplish cytoplasm with little fibre
    e_normal = np.clip(0.82 + 0.3 * fibre, 0.15, 1.6)
    e_tumour = np.clip(0.85 + 0.1 * fibre, 0.5, 1.3)
    c_e = (desc.stain_e * ts) * ((1 - u) * e_normal + u * e_tumour) * (1 - 0.75 * n_mask)
    c_h = ts * (0.04 + 0.12 * u + h_nuclei)
    grain_bg = 1.6 * grain
    grain_tissue = 1.2 * grain * t
    planes = []
    for channel in range(3):
        od = c_h * desc.stain_od[0, channel] + c_e * desc.stain_od[1, channel]
        plane = (desc.background_rgb[channel] + grain_bg) * cv2.exp(-od) + grain_tissue
        planes.append(cv2.convertScaleAbs(plane))
    return cv2.merge(planes)


# ---------------------------------------------------------------------------------------------------------------
# Pyramid and TIFF
# ---------------------------------------------------------------------------------------------------------------
def _level_sizes(width: int, height: int, min_level_px: int) -> list[tuple[int, int]]:
    """Level dimensions, halving from level 0 as long as the longer side stays at least ``min_level_px``."""
    sizes = [(width, height)]
    while max(sizes[-1]) >= 2 * min_level_px and min(sizes[-1]) >= 2 * _TILE_PX:
        w, h = sizes[-1]
        sizes.append(((w + 1) // 2, (h + 1) // 2))
    return sizes


def _new_buffer(shape: tuple[int, int, int], tmpdir: Path) -> np.ndarray:
    """A uint8 array: in memory when small, memory-mapped to an anonymous temporary file when large."""
    if math.prod(shape) <= _IN_MEMORY_BYTES:
        return np.zeros(shape, np.uint8)
    with tempfile.TemporaryFile(dir=tmpdir) as handle:  # the mapping outlives the handle; the file has no name
        return np.memmap(handle, dtype=np.uint8, mode="w+", shape=shape)


def _halve(image: np.ndarray) -> np.ndarray:
    """2x2 mean (edges replicated for odd sizes), uint8."""
    h, w = image.shape[:2]
    if h % 2 or w % 2:
        image = np.pad(image, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    return cv2.resize(image, (image.shape[1] // 2, image.shape[0] // 2), interpolation=cv2.INTER_AREA)


def _halve_level(src: np.ndarray, tmpdir: Path) -> np.ndarray:
    """The next pyramid level of ``src``, computed in stripes (``src`` may be memory-mapped)."""
    h, w = src.shape[:2]
    dst = _new_buffer(((h + 1) // 2, (w + 1) // 2, 3), tmpdir)
    stripe = 1024
    for top in range(0, h, stripe):
        dst[top // 2 : (min(h, top + stripe) + 1) // 2] = _halve(np.asarray(src[top : top + stripe]))
    return dst


def _level0_tiles(desc: _Description, level1: np.ndarray | None, workers: int) -> Iterator[np.ndarray]:
    """Yield the level-0 tiles in TIFF order, rendered in blocks by ``workers`` threads; fill ``level1`` on the way."""
    tile = _TILE_PX
    blocks = [
        (x0, y0, min(_BLOCK_W_PX, math.ceil((desc.width - x0) / tile) * tile), tile)
        for y0 in range(0, desc.height, tile)
        for x0 in range(0, desc.width, _BLOCK_W_PX)
    ]

    def render(block: tuple[int, int, int, int]) -> np.ndarray:
        x0, y0, w, h = block
        image = _render_block(desc, x0, y0, w, h)
        if level1 is not None:
            small = _halve(image)
            y1, x1 = y0 // 2, x0 // 2
            rows = min(small.shape[0], level1.shape[0] - y1)
            cols = min(small.shape[1], level1.shape[1] - x1)
            level1[y1 : y1 + rows, x1 : x1 + cols] = small[:rows, :cols]
        return image

    with ThreadPoolExecutor(max(1, workers)) as pool:
        pending: deque[tuple[tuple[int, int, int, int], Future[np.ndarray]]] = deque()
        queue = iter(blocks)
        for block in queue:
            pending.append((block, pool.submit(render, block)))
            if len(pending) >= 2 * workers + 1:
                break
        while pending:
            block, future = pending.popleft()
            nxt = next(queue, None)
            if nxt is not None:
                pending.append((nxt, pool.submit(render, nxt)))
            image = future.result()
            for offset in range(0, block[2], tile):
                yield image[:, offset : offset + tile]


def _write_tiff(
    desc: _Description, path: Path, jpeg_quality: int, min_level_px: int, workers: int
) -> list[tuple[int, int]]:
    """Write the pyramidal, tiled, JPEG-compressed BigTIFF (to a ``.partial`` file first, then renamed).

    Returns:
        The (width, height) of each level.
    """
    sizes = _level_sizes(desc.width, desc.height, min_level_px)
    path.parent.mkdir(parents=True, exist_ok=True)
    level1 = None
    if len(sizes) > 1:
        w1, h1 = sizes[1]
        level1 = _new_buffer((h1, w1, 3), path.parent)
    options: dict[str, Any] = {
        "tile": (_TILE_PX, _TILE_PX),
        "compression": "jpeg",
        "compressionargs": {"level": jpeg_quality},
        "photometric": "rgb",
        "resolutionunit": "CENTIMETER",
        "maxworkers": max(1, workers),
        "buffersize": 8 << 20,  # tiles queued for compression at a time
        "metadata": None,
    }
    partial = path.with_name(path.name + ".partial")
    try:
        _write_levels(desc, partial, sizes, level1, options, workers)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    os.replace(partial, path)
    return sizes


def _write_levels(
    desc: _Description,
    partial: Path,
    sizes: list[tuple[int, int]],
    level1: np.ndarray | None,
    options: dict[str, Any],
    workers: int,
) -> None:
    """Write level 0 from rendered tiles, then each reduced level from the one above it."""
    import tifffile

    with tifffile.TiffWriter(partial, bigtiff=True) as tif:
        tif.write(
            _level0_tiles(desc, level1, workers),
            shape=(desc.height, desc.width, 3),
            dtype=np.uint8,
            subfiletype=0,
            resolution=(1e4 / desc.mpp, 1e4 / desc.mpp),
            description=f"anomalib-wsi synthetic slide; seed={desc.seed}; mpp={desc.mpp:g}",
            **options,
        )
        previous = level1
        for level, (w, _) in enumerate(sizes[1:], start=1):
            assert previous is not None
            image = previous if level == 1 else _halve_level(previous, partial.parent)
            level_mpp = desc.mpp * desc.width / w
            tif.write(image, subfiletype=1, resolution=(1e4 / level_mpp, 1e4 / level_mpp), **options)
            previous = image


# ---------------------------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------------------------
def _check_options(size_px: tuple[int, int], mpp: float) -> float:
    """Validate a slide size and mpp; returns the mpp as a float."""
    if min(size_px) < 512 or max(size_px) > 200_000:
        msg = (
            f"slide size {size_px[0]}x{size_px[1]} px is out of range; use 512 to 200000 px per side (e.g. --size 8192)"
        )
        raise SynthOptionError(msg)
    try:
        value = float(mpp)
    except (TypeError, ValueError):
        value = math.nan
    if not 0.05 <= value <= 4.0:  # also rejects nan
        msg = f"slide mpp {mpp} is out of range; use a level-0 resolution between 0.05 and 4 µm/px (e.g. --mpp 0.5)"
        raise SynthOptionError(msg)
    return value


def synthesize_slide(
    path: str | Path,
    size_px: int | tuple[int, int] = 8192,
    mpp: float = 0.5,
    seed: int = 0,
    tumour: bool = True,
    annotation_path: str | Path | None = None,
    n_islands: int | None = None,
    n_lesions: int | None = None,
    jpeg_quality: int = 90,
    min_level_px: int = 1024,
    workers: int | None = None,
    stain_od: Any = None,
) -> SyntheticSlide:
    """Write one synthetic H&E-like pyramidal TIFF and, for a tumour slide, its Camelyon16-style ASAP XML.

    Args:
        path: output ``.tif`` file (parent folders are created).
        size_px: side of a square slide, or (width, height), in level-0 pixels.
        mpp: level-0 resolution in µm per pixel written into the file; the geometry (nuclei, lesions) is in µm,
            so a slide at 0.25 mpp shows the same tissue at twice the magnification.
        seed: random seed; the same seed (and size, mpp, options) gives the same pixels.
        tumour: draw 1-3 tumour lesions (with ``_2`` exclusions) and write the ASAP XML.
        annotation_path: where to write the XML of a tumour slide; default ``path`` with suffix ``.xml``.
        n_islands: number of tissue islands (default 3-5, drawn from the seed).
        n_lesions: number of lesions on a tumour slide (default 1-3, drawn from the seed).
        jpeg_quality: JPEG quality of the tiles (1-100).
        min_level_px: reduced levels halve the size as long as the longer side stays at least this.
        workers: threads that render and compress tiles (default: up to 2, the CPUs available).
        stain_od: RGB optical densities of haematoxylin and eosin, ((r, g, b), (r, g, b)); default Macenko's
            reference vectors. Another pair re-stains the same tissue (the geometry depends on the seed only).

    Returns:
        The slide's path, size, mpp and geometry (level-0 pixels).

    Raises:
        SynthOptionError: size, mpp or JPEG quality out of range.

    Example:
        >>> slide = synthesize_slide("slides/synth.tif", size_px=4096, seed=1)      # doctest: +SKIP
        >>> slide.tumour_region.area > 0
        True
    """
    path = Path(path)
    size = (int(size_px), int(size_px)) if isinstance(size_px, int | np.integer) else (int(size_px[0]), int(size_px[1]))
    mpp = _check_options(size, mpp)
    if not 1 <= jpeg_quality <= 100:
        msg = f"JPEG quality {jpeg_quality} is out of range; use 1 to 100 (default 90)"
        raise SynthOptionError(msg)
    if workers is None:
        workers = max(1, min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 2))
    desc = _describe(size[0], size[1], mpp, int(seed), tumour, n_islands, n_lesions)
    if stain_od is not None:
        od = np.asarray(stain_od, np.float32)
        if od.shape != (2, 3) or not (np.isfinite(od).all() and (od >= 0).all()):
            msg = f"stain_od must be two non-negative RGB optical densities ((r, g, b), (r, g, b)), got {stain_od!r}"
            raise SynthOptionError(msg)
        desc.stain_od = od
    levels = _write_tiff(desc, path, jpeg_quality, min_level_px, workers)
    written_xml: Path | None = None
    if desc.tumours:
        from anomalib_wsi.annotations.asap import write_asap_xml

        written_xml = Path(annotation_path) if annotation_path is not None else path.with_suffix(".xml")
        groups = [("_0", p) for p in desc.tumours] + [("_2", p) for p in desc.exclusions]
        write_asap_xml(written_xml, groups)
    logger.debug("wrote %s (%dx%d px, %d levels, %d lesions)", path, size[0], size[1], len(levels), len(desc.tumours))
    return SyntheticSlide(
        path=path,
        size_px=size,
        mpp=float(mpp),
        tumour_polygons=list(desc.tumours),
        exclusion_polygons=list(desc.exclusions),
        tissue_polygons=list(desc.islands),
        annotation_path=written_xml,
        seed=int(seed),
        level_dimensions=levels,
    )


def _slide_seed(seed: int, index: int) -> int:
    """An independent 31-bit seed for slide ``index`` of a cohort."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0] & 0x7FFFFFFF)


def _remove_stale(root: Path, n_slides: int) -> None:
    """Delete slides, annotations and partial files of an earlier, larger or different cohort in ``root``.

    Only this generator's own names (``synth_NNN.tif``, ``synth_NNN.xml``, ``*.partial``) are touched, so that a
    folder listing of ``slides/`` or ``annotations/`` shows exactly this cohort.
    """
    keep = {f"synth_{index:03d}" for index in range(n_slides)}
    for folder, suffix in (("slides", ".tif"), ("annotations", ".xml")):
        directory = root / folder
        if not directory.is_dir():
            continue
        for path in directory.iterdir():
            stale_slide = path.suffix == suffix and re.fullmatch(r"synth_\d{3,}", path.stem) and path.stem not in keep
            if stale_slide or path.name.endswith(".partial"):
                logger.info("removing %s left by an earlier synthetic cohort", path)
                path.unlink()


def synthesize_cohort(
    output: str | Path,
    n_slides: int = 6,
    seed: int = 0,
    size_px: int = 8192,
    mpp: float = 0.5,
    tumour_fraction_of_slides: float = 0.5,
    progress: bool = False,
) -> SyntheticCohort:
    """Write a cohort: ``slides/synth_NNN.tif``, ``annotations/synth_NNN.xml`` (tumour slides), ``labels.csv``.

    Args:
        output: cohort folder (created). Slides, annotations and ``labels.csv`` of an earlier cohort there are
            replaced; ``labels.csv`` is written last, so its presence means the cohort is complete.
        n_slides: number of slides.
        seed: random seed; the same seed gives the same slides, pixel for pixel.
        size_px: side of each (square) slide in level-0 pixels.
        mpp: level-0 resolution in µm per pixel.
        tumour_fraction_of_slides: share of slides with tumour; with two or more slides there is always at least
            one tumour and one normal slide.
        progress: show a progress bar over slides.

    Returns:
        Paths, labels and geometry of the cohort.

    Raises:
        SynthOptionError: an option is out of range.

    Example:
        >>> cohort = synthesize_cohort("demo_data", n_slides=4, size_px=4096)      # doctest: +SKIP
        >>> len(cohort.slides), len(cohort.annotations)
        (4, 2)
    """
    if n_slides < 1:
        msg = f"number of slides must be at least 1, got {n_slides} (e.g. --slides 6)"
        raise SynthOptionError(msg)
    if not 0.0 <= tumour_fraction_of_slides <= 1.0:
        msg = f"tumour_fraction_of_slides must be between 0 and 1, got {tumour_fraction_of_slides}"
        raise SynthOptionError(msg)
    mpp = _check_options((int(size_px), int(size_px)), mpp)
    root = Path(output)
    labels_csv = root / "labels.csv"
    labels_csv.unlink(missing_ok=True)  # written last: its presence marks a complete cohort
    _remove_stale(root, n_slides)
    n_tumour = round(n_slides * tumour_fraction_of_slides)
    if n_slides >= 2:
        n_tumour = min(max(n_tumour, 1), n_slides - 1)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0xC0407]))
    is_tumour = np.zeros(n_slides, bool)
    is_tumour[rng.permutation(n_slides)[:n_tumour]] = True

    from tqdm.auto import tqdm

    details: dict[str, SyntheticSlide] = {}
    for index in tqdm(range(n_slides), desc="synthetic slides", unit="slide", disable=not progress):
        slide_id = f"synth_{index:03d}"
        xml = root / "annotations" / f"{slide_id}.xml"
        xml.unlink(missing_ok=True)  # a normal slide has none, whatever an earlier run left
        details[slide_id] = synthesize_slide(
            root / "slides" / f"{slide_id}.tif",
            size_px=int(size_px),
            mpp=mpp,
            seed=_slide_seed(seed, index),
            tumour=bool(is_tumour[index]),
            annotation_path=xml,
        )
    partial = labels_csv.with_name(labels_csv.name + ".partial")
    with partial.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["slide_id", "label"])
        for slide_id, slide in details.items():
            writer.writerow([slide_id, "tumor" if slide.is_tumour else "normal"])
    os.replace(partial, labels_csv)
    return SyntheticCohort(
        root=root,
        slides=[s.path for s in details.values()],
        annotations={k: s.annotation_path for k, s in details.items() if s.annotation_path is not None},
        labels_csv=labels_csv,
        tumour_slide_ids=[k for k, s in details.items() if s.is_tumour],
        normal_slide_ids=[k for k, s in details.items() if not s.is_tumour],
        slide_details=details,
    )
