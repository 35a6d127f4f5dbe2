"""`glyphs`: the embedded default dataset, procedurally generated Omniglot-like characters.

Nothing is downloaded. The generator works in three levels, each with its own randomness:

- an *alphabet* has a stroke style: how many strokes its characters have, which directions
  they prefer, how long and how curved they are, how often strokes join, loop or bend into an
  S, how thick the pen is. Alphabets therefore differ from each other like real scripts.
- a *character* is 1-4 strokes drawn from its alphabet's style: cubic Bezier curves
  (`style: standard`) or angular polylines with sharp turns and a thicker pen
  (`style: shifted`, the cross-domain test set). It is centred and scaled into a fixed box.
- a *drawer* (one sample) draws the character again: noise on every control point, a small
  shift per stroke, a smooth random warp of the whole glyph, a random affine change (rotation,
  scale, aspect, shear), a translation and a pen width of its own.

Rendering is analytic and vectorised in numpy: every stroke is a polyline of short segments,
each pixel takes its distance to the nearest segment, and ink is `clip(w/2 + 1/2 - d, 0, 1)`
(a 1-pixel anti-aliased edge). Images are uint8 [N, 1, H, W], strokes 255 on black 0.

The split is by alphabet (train/val/test alphabets are disjoint). Randomness is keyed by
(seed, 'glyphs', style, alphabet, character, ...), so a smaller `alphabets` gives a prefix of
a larger run's alphabets and `image_size` or the difficulty knobs never change which
characters exist.
"""

from __future__ import annotations

import numbers
from pathlib import Path

import numpy as np
import pandas as pd

from mtml.data.sources import check_options, declare
from mtml.data.storage import SPLITS, write_prepared
from mtml.errors import UserError
from mtml.options import Option, defaults
from mtml.utils import derive_seed

GENERATOR_VERSION = 1
STYLES = ("standard", "shifted")

OPTIONS = {
    "style": Option(str, "standard", "standard (Bezier strokes) | shifted (angular, thick pen)",
                    choices=STYLES),
    "image_size": Option(int, 28, "output images are image_size x image_size", min=8),
    "alphabets": Option(int, 30, "alphabets (the split is by alphabet)", min=1),
    "characters_per_alphabet": Option(int, 20, "characters (classes) per alphabet", min=1),
    "drawers": Option(int, 20, "samples per character", min=1),
    "split": Option((list, dict), [20, 5, 5], "alphabets for train/val/test: counts or relative "
                    "weights, as [train, val, test] or {train: .., val: .., test: ..}",
                    items=float, min=0, length=3),
    "jitter": Option(float, 1.0, "x drawer shape noise (control points, stroke shift, warp)", min=0),
    "translate": Option(float, 1.0, "x drawer translation", min=0),
    "affine": Option(float, 1.0, "x drawer rotation / scale / aspect / shear", min=0),
    "stroke_width": Option(float, 1.0, "x the style's pen width", min=0, above=True),
    "width_jitter": Option(float, 1.0, "x drawer pen-width variation", min=0),
}
DEFAULTS = defaults(OPTIONS)

# Calibrated base magnitudes (the knobs above multiply them). Units: the image spans [-1, 1],
# so 0.07 is about 1 pixel at 28x28.
BOX = 0.66               # a character's larger half-extent before drawer changes
CP_SIGMA = 0.045         # independent noise on each control point
STROKE_SHIFT = 0.04      # a shift shared by the points of one stroke
WARP_SIGMA = 0.08        # amplitude of the smooth random warp (per mode)
WARP_MODES = 3
ROT_SIGMA = 0.18         # radians (about 10 degrees)
SCALE_SIGMA = 0.10       # log-scale
ASPECT_SIGMA = 0.08      # log aspect ratio
SHEAR_SIGMA = 0.13
TRANSLATE_SIGMA = 0.09
WIDTH = 0.135            # pen width of the standard style (about 1.9 px at 28x28)
WIDTH_SIGMA = 0.15       # log pen-width variation between drawers
BEZIER_POINTS = 11       # points per Bezier stroke (10 segments)
MAX_LEGS = 4             # segments per polyline stroke (shifted style)

_T = np.linspace(0.0, 1.0, BEZIER_POINTS)
# points = BASIS @ control points: Bernstein basis for cubic Beziers, identity for polylines.
BASIS = {
    "standard": np.stack([(1 - _T) ** 3, 3 * _T * (1 - _T) ** 2, 3 * _T**2 * (1 - _T), _T**3], 1),
    "shifted": np.eye(MAX_LEGS + 1),
}


# --------------------------------------------------------------------------- options


def _key(dataset: str, key: str) -> str:
    return f"params key 'datasets.{dataset}.options.{key}'"


def resolve_split(split, alphabets: int, dataset: str = "glyphs") -> list[int]:
    """Alphabets per split, [train, val, test].

    `split` is a list [train, val, test] or a mapping with those keys. Integers that sum to
    `alphabets` are counts; anything else is relative weights (fractions), rounded by largest
    remainder with at least one alphabet for every split of positive weight. The default
    [20, 5, 5] thus means 20/5/5 of 30 alphabets and 8/2/2 of 12.
    """
    where = _key(dataset, "split")
    if isinstance(split, dict):
        unknown = sorted(set(split) - set(SPLITS))
        if unknown:
            raise UserError(f"{where} has unknown split {unknown[0]!r}; allowed: {', '.join(SPLITS)}")
        split = [split.get(s, 0) for s in SPLITS]
    if not isinstance(split, list | tuple) or len(split) != 3:
        raise UserError(f"{where} must be [train, val, test] (counts or fractions); got {split!r}")
    if not all(isinstance(v, numbers.Real) and not isinstance(v, bool) and np.isfinite(v) and v >= 0
               for v in split):
        raise UserError(f"{where} must hold three numbers >= 0; got {split!r}")
    if split[0] <= 0:
        raise UserError(f"{where} gives the train split no alphabets; got {split!r}")
    if all(isinstance(v, numbers.Integral) for v in split) and sum(split) == alphabets:
        return [int(v) for v in split]
    weights = np.asarray(split, dtype=float)
    positive = int((weights > 0).sum())
    if alphabets < positive:
        raise UserError(
            f"{where} asks for {positive} non-empty splits but "
            f"{_key(dataset, 'alphabets')} is {alphabets}"
        )
    # Every split of positive weight gets one alphabet; the rest goes by largest remainder.
    counts = (weights > 0).astype(int)
    share = weights / weights.sum() * alphabets - counts
    share = np.maximum(share, 0)
    extra = alphabets - positive
    if share.sum() > 0:
        share = share / share.sum() * extra
    base = np.floor(share).astype(int)
    order = np.argsort(-(share - base), kind="stable")
    base[order[: extra - base.sum()]] += 1
    return (counts + base).tolist()


def resolve_options(options: dict, dataset: str = "glyphs") -> dict:
    """Fill defaults, reject unknown keys and bad values with a UserError naming the key."""
    opts = check_options(dataset, dict(options or {}), OPTIONS)
    for key in ("image_size", "alphabets", "characters_per_alphabet", "drawers"):
        opts[key] = int(opts[key])
    for key in ("jitter", "translate", "affine", "width_jitter", "stroke_width"):
        opts[key] = float(opts[key])
    opts["split"] = resolve_split(opts["split"], opts["alphabets"], dataset)
    return opts


# --------------------------------------------------------------------------- alphabets


def _count_probs(mean: float, sd: float = 0.8) -> np.ndarray:
    k = np.arange(1, 5)
    p = np.exp(-0.5 * ((k - mean) / sd) ** 2)
    return p / p.sum()


def _alphabet_style(rng: np.random.Generator, style: str) -> dict:
    n_dir = int(rng.integers(2, 5))
    common = {
        "strokes": _count_probs(rng.uniform(1.6, 3.4)),
        "directions": rng.uniform(0, np.pi, n_dir),
        "dir_weights": rng.dirichlet(np.full(n_dir, 2.0)),
        "kappa": rng.uniform(3.0, 12.0),       # concentration around preferred directions
        "p_free": rng.uniform(0.05, 0.35),     # strokes in any direction
        "length": rng.uniform(0.8, 1.3),
        "p_connect": rng.uniform(0.25, 0.85),  # a stroke starts on an earlier one
        "aspect": float(np.exp(rng.normal(0, 0.15))),
    }
    if style == "standard":
        return {**common,
                "curv_mean": rng.uniform(0.0, 0.4),   # typical bend (fraction of length)
                "curv_sd": rng.uniform(0.08, 0.3),
                "p_s": rng.uniform(0.0, 0.6),         # S-bend rather than C-bend
                "p_loop": rng.uniform(0.0, 0.25),
                "width": rng.uniform(0.85, 1.2)}
    # shifted: angular polylines on a grid of directions, sharp turns, heavy pen.
    turn = rng.choice([np.pi / 3, np.pi / 2, 2 * np.pi / 3])
    return {**common,
            "directions": rng.uniform(0, np.pi) + np.arange(n_dir) * np.pi / n_dir,
            "kappa": rng.uniform(15.0, 40.0),
            "legs": _count_probs(rng.uniform(1.5, 3.5)),
            "turn": float(turn),
            "p_same_turn": rng.uniform(0.0, 1.0),     # spiral/hook vs zigzag
            "width": rng.uniform(1.35, 1.7)}


def _direction(rng: np.random.Generator, a: dict) -> float:
    if rng.random() < a["p_free"]:
        return rng.uniform(0, 2 * np.pi)
    base = a["directions"][rng.choice(len(a["directions"]), p=a["dir_weights"])]
    return base + rng.vonmises(0.0, a["kappa"]) + np.pi * rng.integers(0, 2)


def _start(rng: np.random.Generator, a: dict, drawn: list[np.ndarray], style: str) -> np.ndarray:
    if drawn and rng.random() < a["p_connect"]:
        pts = BASIS[style] @ _fill(drawn[rng.integers(len(drawn))])
        if rng.random() < 0.6:  # an end of the earlier stroke
            return pts[0 if rng.random() < 0.5 else -1].copy()
        return pts[rng.integers(len(pts))].copy()  # somewhere along it
    return rng.uniform(-0.8, 0.8, 2)


def _rotation(angle: float) -> np.ndarray:
    return np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])


def _bezier_stroke(rng: np.random.Generator, a: dict, p0: np.ndarray) -> np.ndarray:
    theta = _direction(rng, a)
    length = a["length"] * np.exp(rng.normal(0, 0.3))
    u = np.array([np.cos(theta), np.sin(theta)])
    n = np.array([-u[1], u[0]])
    if rng.random() < a["p_loop"]:
        # a closed-ish teardrop: end near the start, handles spread to both sides
        spread = rng.uniform(0.5, 0.9)
        length = max(length, 0.8 * a["length"])  # tiny loops would render as blobs
        p1 = p0 + 1.1 * length * _rotation(spread) @ u
        p2 = p0 + 1.1 * length * _rotation(-spread) @ u
        p3 = p0 + rng.normal(0, 0.08, 2)
        return np.stack([p0, p1, p2, p3])
    p3 = p0 + length * u
    sign = 1.0 if rng.random() < 0.5 else -1.0
    b1 = length * (sign * a["curv_mean"] + a["curv_sd"] * rng.normal())
    b2 = length * (sign * a["curv_mean"] + a["curv_sd"] * rng.normal())
    if rng.random() < a["p_s"]:
        b2 = -b2
    p1 = p0 + length / 3 * u + b1 * n
    p2 = p0 + 2 * length / 3 * u + b2 * n
    return np.stack([p0, p1, p2, p3])


def _polyline_stroke(rng: np.random.Generator, a: dict, p0: np.ndarray) -> np.ndarray:
    legs = int(rng.choice(MAX_LEGS, p=a["legs"])) + 1
    theta = _direction(rng, a)
    total = a["length"] * np.exp(rng.normal(0, 0.3)) * (1 + 0.25 * (legs - 1))
    pts = [p0]
    turn_sign = 1.0 if rng.random() < 0.5 else -1.0
    for _ in range(legs):
        leg = total / legs * np.exp(rng.normal(0, 0.2))
        pts.append(pts[-1] + leg * np.array([np.cos(theta), np.sin(theta)]))
        if rng.random() >= a["p_same_turn"]:
            turn_sign = -turn_sign
        theta += turn_sign * a["turn"] + rng.normal(0, 0.08)
    # NaN vertices pad to MAX_LEGS; `_fill` turns them into zero-length segments after the
    # drawer noise, so padding never grows spurs.
    pts += [np.full(2, np.nan)] * (MAX_LEGS + 1 - len(pts))
    return np.stack(pts)


def _fill(ctrl: np.ndarray) -> np.ndarray:
    """Replace NaN padding vertices (axis -2) by the last real vertex."""
    if not np.isnan(ctrl).any():
        return ctrl
    ctrl = ctrl.copy()
    for c in range(1, ctrl.shape[-2]):
        ctrl[..., c, :] = np.where(np.isnan(ctrl[..., c, :]), ctrl[..., c - 1, :], ctrl[..., c, :])
    return ctrl


def _character(rng: np.random.Generator, a: dict, style: str) -> np.ndarray:
    """Control points [strokes, C, 2] of one character, centred and scaled into BOX."""
    n = int(rng.choice(4, p=a["strokes"])) + 1
    strokes: list[np.ndarray] = []
    for _ in range(n):
        p0 = _start(rng, a, strokes, style)
        make = _bezier_stroke if style == "standard" else _polyline_stroke
        strokes.append(make(rng, a, p0))
    ctrl = np.stack(strokes) * np.array([a["aspect"], 1 / a["aspect"]])
    pts = (BASIS[style] @ _fill(ctrl)).reshape(-1, 2)
    lo, hi = pts.min(0), pts.max(0)
    half = max(float((hi - lo).max()) / 2, 1e-3)
    return (ctrl - (lo + hi) / 2) * (BOX / half)


# --------------------------------------------------------------------------- drawers


def _draw(rng: np.random.Generator, ctrl: np.ndarray, drawers: int, style: str, opts: dict):
    """Sampled points [drawers, strokes, K, 2] (image units) of `drawers` renditions."""
    s, c, _ = ctrl.shape
    j, aff = opts["jitter"], opts["affine"]
    ctrl = (ctrl[None]
            + rng.normal(0, CP_SIGMA * j, (drawers, s, c, 2))
            + rng.normal(0, STROKE_SHIFT * j, (drawers, s, 1, 2)))
    pts = np.einsum("kc,dscx->dskx", BASIS[style], _fill(ctrl))
    # A smooth warp: a few random plane waves of displacement, shared by all strokes.
    freq = rng.uniform(1.5, 3.0, (drawers, WARP_MODES, 1, 1))
    ang = rng.uniform(0, 2 * np.pi, (drawers, WARP_MODES, 1, 1))
    phase = rng.uniform(0, 2 * np.pi, (drawers, WARP_MODES, 1, 1))
    amp = rng.normal(0, WARP_SIGMA * j, (drawers, WARP_MODES, 1, 1, 2))
    wave = np.sin(freq * (np.cos(ang) * pts[:, None, ..., 0] + np.sin(ang) * pts[:, None, ..., 1])
                  + phase)
    pts = pts + (amp * wave[..., None]).sum(1)
    # Affine: rotation . shear . anisotropic scale, about the character's centre.
    rot = rng.normal(0, ROT_SIGMA * aff, drawers)
    scale = np.exp(rng.normal(0, SCALE_SIGMA * aff, drawers))
    aspect = np.exp(rng.normal(0, ASPECT_SIGMA * aff, drawers))
    shear = rng.normal(0, SHEAR_SIGMA * aff, drawers)
    cos, sin = np.cos(rot), np.sin(rot)
    sx, sy = scale * aspect, scale / aspect
    m = np.empty((drawers, 2, 2))
    m[:, 0, 0], m[:, 0, 1] = cos * sx, (cos * shear - sin) * sy
    m[:, 1, 0], m[:, 1, 1] = sin * sx, (sin * shear + cos) * sy
    shift = rng.normal(0, TRANSLATE_SIGMA * opts["translate"], (drawers, 1, 1, 2))
    pts = np.einsum("dxy,dsky->dskx", m, pts) + shift
    width = np.exp(rng.normal(0, WIDTH_SIGMA * opts["width_jitter"], drawers))
    return pts, width


# --------------------------------------------------------------------------- rendering


def render(points: np.ndarray, width: np.ndarray, size: int, budget: int = 1 << 22) -> np.ndarray:
    """Rasterise polylines with anti-aliasing.

    points [B, S, K, 2] in image units ([-1, 1] spans the image, y down), width [B] pen
    widths in image units. Returns uint8 [B, size, size]. Images go in chunks of about
    `budget` (pixel x segment) elements, so memory stays flat for any size.
    """
    b = points.shape[0]
    chunk = max(1, budget // (points.shape[1] * (points.shape[2] - 1) * size * size))
    scale = size / 2.0
    pix = (points.astype(np.float64) + 1.0) * scale  # pixel units, pixel centres at i + 0.5
    a = pix[:, :, :-1].reshape(b, -1, 2).astype(np.float32)
    e = pix[:, :, 1:].reshape(b, -1, 2).astype(np.float32)
    grid = np.arange(size, dtype=np.float32) + 0.5
    out = np.empty((b, size, size), dtype=np.uint8)
    for lo in range(0, b, chunk):
        sl = slice(lo, lo + chunk)
        ax, ay = a[sl, :, 0, None], a[sl, :, 1, None]
        ux, uy = e[sl, :, 0, None] - ax, e[sl, :, 1, None] - ay  # [B, N, 1]
        inv = 1.0 / np.maximum(ux * ux + uy * uy, 1e-6)
        dx = grid - ax  # [B, N, W]
        dy = grid - ay  # [B, N, H]
        # projection parameter t of every pixel on every segment, clipped to the segment
        t = (dx * ux * inv)[:, :, None, :] + (dy * uy * inv)[:, :, :, None]  # [B, N, H, W]
        np.clip(t, 0.0, 1.0, out=t)
        ex = dx[:, :, None, :] - t * ux[..., None]
        ey = t
        ey *= uy[..., None]
        np.subtract(dy[:, :, :, None], ey, out=ey)
        ex *= ex
        ey *= ey
        ex += ey
        d = np.sqrt(ex.min(axis=1))  # [B, H, W]
        half = (width[sl, None, None] * scale / 2 + 0.5).astype(np.float32)
        ink = np.clip(half - d, 0.0, 1.0)
        out[sl] = np.rint(ink * 255.0).astype(np.uint8)
    return out


# --------------------------------------------------------------------------- dataset


def generate(options: dict, seed: int, dataset: str = "glyphs"):
    """(images uint8 [N, 1, H, W], labels int64 [N], class table, meta) for `options`.

    Images are ordered by class, `drawers` per class; class ids follow alphabets in order,
    so train alphabets come first, then val, then test.
    """
    opts = resolve_options(options, dataset)
    style, size, n_drawers = opts["style"], opts["image_size"], opts["drawers"]
    root = derive_seed(seed, "glyphs", style)
    split_of = np.repeat(np.array(SPLITS), opts["split"])

    by_strokes: dict[int, list] = {}  # stroke count -> [(class, points, widths)]
    rows = []
    for ai in range(opts["alphabets"]):
        alphabet = _alphabet_style(np.random.default_rng([root, ai]), style)
        for ci in range(opts["characters_per_alphabet"]):
            ctrl = _character(np.random.default_rng([root, ai, ci]), alphabet, style)
            pts, width = _draw(np.random.default_rng([root, ai, ci, 1]), ctrl, n_drawers, style, opts)
            width = width * WIDTH * alphabet["width"] * opts["stroke_width"]
            cls = len(rows)
            rows.append({"class_id": cls, "name": f"alpha{ai:02d}/char{ci:02d}",
                         "group": f"alpha{ai:02d}", "split": str(split_of[ai]),
                         "n_images": n_drawers})
            by_strokes.setdefault(ctrl.shape[0], []).append((cls, pts, width))

    images = np.empty((len(rows) * n_drawers, 1, size, size), dtype=np.uint8)
    for group in by_strokes.values():
        pts = np.concatenate([g[1] for g in group])
        width = np.concatenate([g[2] for g in group])
        rendered = render(pts, width, size)
        for i, (cls, _, _) in enumerate(group):
            images[cls * n_drawers:(cls + 1) * n_drawers, 0] = rendered[i * n_drawers:(i + 1) * n_drawers]
    labels = np.repeat(np.arange(len(rows), dtype=np.int64), n_drawers)
    classes = pd.DataFrame(rows, columns=["class_id", "name", "group", "split", "n_images"])
    meta = {"source": "glyphs", "generator_version": GENERATOR_VERSION, "style": style,
            "seed": int(seed), "options": opts,
            "split_alphabets": dict(zip(SPLITS, opts["split"], strict=True))}
    return images, labels, classes, meta


@declare(OPTIONS, check=resolve_options)
def prepare(name: str, options: dict, raw_dir: Path, out_dir: Path, seed: int) -> None:
    """Generate the glyphs dataset into `out_dir` (nothing to download; raw_dir is unused)."""
    opts = check_options(name, options, OPTIONS)
    images, labels, classes, meta = generate(opts, seed, dataset=name)
    write_prepared(out_dir, images, labels, classes, meta)
