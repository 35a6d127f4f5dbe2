"""`shapes`: generated coloured, textured shapes, the colour mode beside the glyph modes.

Nothing is downloaded. A *group* (the unit of the train/val/test split, like an alphabet) has
its own `shapes_per_group` shape types and `schemes_per_group` texture/colour schemes, and a
class is one shape type in one scheme, so a group holds shapes x schemes classes and the test
groups bring shapes and schemes never seen in training.

- a *shape type* is a star-shaped outline r = R(theta) around the centre: a polygon with
  3-8 vertices at equal angles (regular, star-like with alternating radii, or irregular), or
  a smooth blob (a few Fourier modes of the radius); a third of them have a hole (a ring).
- a *scheme* is a pattern (stripes, checks, dots, rings or a gradient) with its frequency and
  angle, two ink colours the pattern blends, and a background colour that differs clearly
  from the ink in brightness.
- a *sample* draws its class again: rotation, scale, aspect, translation, a shift of the
  pattern's phase, a small colour change and pixel noise.

Rendering is analytic and vectorised in numpy (one call per class): every pixel is mapped
into the shape's frame, its coverage is clip(R(theta) - r + 1/2 pixel) (an anti-aliased
edge), the pattern is evaluated in the shape's frame (so it turns with the shape). Images are
RGB uint8 [N, 3, H, W].

Randomness is keyed by (seed, 'shapes', group, ...), so a smaller `groups` gives a prefix of a
larger run's groups and `image_size` never changes which classes exist.
"""

from __future__ import annotations

import colorsys
import numbers
from pathlib import Path

import numpy as np
import pandas as pd

from mtml.data.glyphs import resolve_split
from mtml.data.sources import check_options, declare
from mtml.data.storage import SPLITS, write_prepared
from mtml.errors import UserError
from mtml.options import Option, defaults
from mtml.utils import derive_seed

GENERATOR_VERSION = 1
PATTERNS = ("stripes", "checks", "dots", "rings", "gradient")

OPTIONS = {
    "image_size": Option(int, 28, "output images are image_size x image_size, RGB", min=16),
    "groups": Option(int, 16, "groups of classes (the split is by group)", min=1),
    "shapes_per_group": Option(int, 4, "outlines per group", min=1),
    "schemes_per_group": Option(int, 3, "colour schemes per group; classes per group = "
                                "shapes_per_group x schemes_per_group", min=1),
    "samples": Option(int, 20, "images per class", min=1),
    "split": Option((list, dict), [10, 3, 3], "groups for train/val/test: counts or relative weights",
                    items=float, min=0, length=3),
    "jitter": Option(float, 1.0, "x per-sample geometry (rotation, scale, aspect, shift)", min=0),
    "noise": Option(float, 1.0, "x per-sample colour change and pixel noise", min=0),
}
DEFAULTS = defaults(OPTIONS)

# Base magnitudes (the knobs multiply them); the image spans [-1, 1].
RADIUS = 0.62          # outline radius before sample changes
ROT_SIGMA = 0.25       # radians
SCALE_SIGMA = 0.10     # log-scale
ASPECT_SIGMA = 0.08    # log aspect ratio
SHIFT_SIGMA = 0.08
COLOUR_SIGMA = 0.04    # per-channel colour change of a sample
PIXEL_SIGMA = 0.03     # pixel noise
FOURIER_MODES = 5


# --------------------------------------------------------------------------- options


def _key(dataset: str, key: str) -> str:
    return f"params key 'datasets.{dataset}.options.{key}'"


def resolve_options(options: dict, dataset: str = "shapes") -> dict:
    """Fill defaults, reject unknown keys and bad values with a UserError naming the key."""
    opts = check_options(dataset, dict(options or {}), OPTIONS)
    for key in ("image_size", "groups", "shapes_per_group", "schemes_per_group", "samples"):
        opts[key] = int(opts[key])
    for key in ("jitter", "noise"):
        opts[key] = float(opts[key])
    split = opts["split"]
    if isinstance(split, list | tuple) and len(split) == 3 and all(
            isinstance(v, numbers.Real) and not isinstance(v, bool) for v in split):
        needed = sum(v > 0 for v in split)
        if needed > opts["groups"]:
            raise UserError(f"{_key(dataset, 'split')} asks for {needed} non-empty splits but "
                            f"{_key(dataset, 'groups')} is {opts['groups']}")
    opts["split"] = resolve_split(split, opts["groups"], dataset)
    return opts


# --------------------------------------------------------------------------- classes


def _shape_type(rng: np.random.Generator) -> dict:
    """A star-shaped outline: vertex radii at equal angles, or Fourier modes; maybe a hole."""
    family = rng.choice(["regular", "star", "irregular", "blob"])
    if family == "blob":
        shape = {"family": "blob",
                 "amp": rng.uniform(0.05, 0.22, FOURIER_MODES) / np.arange(1, FOURIER_MODES + 1) ** 0.5,
                 "phase": rng.uniform(0, 2 * np.pi, FOURIER_MODES)}
        shape["amp"][0] = 0.0  # no first mode: it would only shift the blob
    else:
        n = int(rng.integers(3, 9))
        if family == "regular":
            radii = np.ones(n)
        elif family == "star":
            n = max(n, 4)
            radii = np.tile([1.0, rng.uniform(0.4, 0.65)], n)
        else:
            radii = rng.uniform(0.6, 1.0, n)
        shape = {"family": "polygon", "radii": radii / radii.max(), "offset": rng.uniform(0, 2 * np.pi)}
    shape["hole"] = float(rng.uniform(0.35, 0.55)) if rng.random() < 1 / 3 else 0.0
    return shape


def _outline(shape: dict, theta: np.ndarray) -> np.ndarray:
    """R(theta) in units of RADIUS (max about 1)."""
    if shape["family"] == "blob":
        k = np.arange(1, FOURIER_MODES + 1)
        r = 1 + (shape["amp"] * np.cos(k * theta[..., None] + shape["phase"])).sum(-1)
        return r / (1 + shape["amp"].sum())
    radii = shape["radii"]
    m = len(radii)
    step = 2 * np.pi / m
    t = np.mod(theta - shape["offset"], 2 * np.pi)
    i = np.minimum((t // step).astype(int), m - 1)
    a0, a1 = i * step, (i + 1) * step
    # Where the ray at angle t meets the edge from vertex i to vertex i+1 (2-D cross products).
    ax, ay = radii[i] * np.cos(a0), radii[i] * np.sin(a0)
    bx, by = radii[(i + 1) % m] * np.cos(a1), radii[(i + 1) % m] * np.sin(a1)
    ex, ey = bx - ax, by - ay
    return (ax * ey - ay * ex) / (np.cos(t) * ey - np.sin(t) * ex)


def _colour(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v))


def _scheme(rng: np.random.Generator) -> dict:
    """Pattern, its frequency and angle, two ink colours, and a background."""
    bg_v = rng.uniform(0.1, 0.9)
    # Ink on the other side of the brightness scale, at least 0.35 away from the background.
    ink_v = rng.uniform(0.5, 1.0) if bg_v < 0.5 else rng.uniform(0.0, 0.5)
    ink_v = float(np.clip(ink_v, 0, 1))
    if abs(ink_v - bg_v) < 0.35:
        ink_v = float(np.clip(bg_v + (0.35 if bg_v < 0.5 else -0.35), 0, 1))
    hue = rng.uniform()
    ink_a = _colour(hue, rng.uniform(0.5, 1.0), ink_v)
    # The second ink differs by at least 60 degrees of hue, or is much darker/lighter.
    hue_b = hue + rng.uniform(1 / 6, 5 / 6)
    ink_b = _colour(hue_b, rng.uniform(0.4, 1.0), float(np.clip(ink_v + rng.uniform(-0.25, 0.25), 0, 1)))
    return {"pattern": str(rng.choice(PATTERNS)), "freq": rng.uniform(1.2, 2.6),
            "angle": rng.uniform(0, np.pi), "ink": np.stack([ink_a, ink_b]),
            "background": _colour(rng.uniform(), rng.uniform(0.1, 0.7), bg_v)}


def _pattern(scheme: dict, u: np.ndarray, v: np.ndarray, phase: np.ndarray) -> np.ndarray:
    """Blend weight in [0, 1] of the second ink at shape-frame coordinates (u, v)."""
    f, a = scheme["freq"], scheme["angle"]
    p = phase[:, None, None]
    along = u * np.cos(a) + v * np.sin(a)
    across = -u * np.sin(a) + v * np.cos(a)
    kind = scheme["pattern"]
    if kind == "stripes":
        w = np.sin(2 * np.pi * f * along + p)
    elif kind == "checks":
        w = np.sin(np.pi * f * along + p) * np.sin(np.pi * f * across + p)
    elif kind == "dots":
        du = np.mod(f * along + p / (2 * np.pi), 1.0) - 0.5
        dv = np.mod(f * across + p / (2 * np.pi), 1.0) - 0.5
        w = (0.3 - np.hypot(du, dv)) * 6
    elif kind == "rings":
        w = np.sin(2 * np.pi * f * np.hypot(u, v) + p)
    else:  # gradient
        w = along / RADIUS + 0.3 * np.sin(p)
    return np.clip(0.5 + 1.5 * w, 0.0, 1.0)


# --------------------------------------------------------------------------- rendering


def render_class(rng: np.random.Generator, shape: dict, scheme: dict, samples: int, size: int,
                 opts: dict) -> np.ndarray:
    """`samples` renditions of one class: uint8 [samples, 3, size, size]."""
    j, nz = opts["jitter"], opts["noise"]
    rot = rng.normal(0, ROT_SIGMA * j, samples)
    scale = np.exp(rng.normal(0, SCALE_SIGMA * j, samples))
    aspect = np.exp(rng.normal(0, ASPECT_SIGMA * j, samples))
    shift = rng.normal(0, SHIFT_SIGMA * j, (samples, 2))
    phase = rng.uniform(0, 2 * np.pi, samples)
    colour = rng.normal(0, COLOUR_SIGMA * nz, (samples, 3))
    noise = rng.normal(0, PIXEL_SIGMA * nz, (samples, 3, size, size))

    grid = (np.arange(size) + 0.5) / size * 2 - 1           # pixel centres in [-1, 1]
    x, y = grid[None, None, :], grid[None, :, None]
    # Into the shape's frame: undo the shift, the rotation, then the scale and aspect.
    dx, dy = x - shift[:, 0, None, None], y - shift[:, 1, None, None]
    c, s = np.cos(rot)[:, None, None], np.sin(rot)[:, None, None]
    sx, sy = (scale * aspect)[:, None, None], (scale / aspect)[:, None, None]
    u, v = (c * dx + s * dy) / sx, (-s * dx + c * dy) / sy
    r, theta = np.hypot(u, v), np.arctan2(v, u)
    outline = RADIUS * _outline(shape, theta)
    pixel = 2.0 / size / np.minimum(sx, sy)                   # one pixel in shape units
    cover = np.clip((outline - r) / pixel + 0.5, 0, 1)
    if shape["hole"]:
        cover *= np.clip((r - shape["hole"] * outline) / pixel + 0.5, 0, 1)

    w = _pattern(scheme, u, v, phase)[:, None]                # [B, 1, H, W]
    ink = scheme["ink"][0][None, :, None, None] * (1 - w) + scheme["ink"][1][None, :, None, None] * w
    ink = ink + colour[:, :, None, None]
    image = cover[:, None] * ink + (1 - cover[:, None]) * scheme["background"][None, :, None, None]
    image = np.clip(image + noise, 0, 1)
    return np.rint(image * 255).astype(np.uint8)


# --------------------------------------------------------------------------- dataset


def generate(options: dict, seed: int, dataset: str = "shapes"):
    """(images uint8 [N, 3, H, W], labels int64 [N], class table, meta) for `options`.

    Images are ordered by class, `samples` per class; class ids follow groups in order, so
    train groups come first, then val, then test.
    """
    opts = resolve_options(options, dataset)
    size, n = opts["image_size"], opts["samples"]
    root = derive_seed(seed, "shapes")
    split_of = np.repeat(np.array(SPLITS), opts["split"])
    rows, images = [], []
    for g in range(opts["groups"]):
        shapes = [_shape_type(np.random.default_rng([root, g, 0, i])) for i in range(opts["shapes_per_group"])]
        schemes = [_scheme(np.random.default_rng([root, g, 1, i])) for i in range(opts["schemes_per_group"])]
        for si, shape in enumerate(shapes):
            for ci, scheme in enumerate(schemes):
                rng = np.random.default_rng([root, g, 2, si, ci])
                images.append(render_class(rng, shape, scheme, n, size, opts))
                rows.append({"class_id": len(rows), "name": f"group{g:02d}/shape{si}-{scheme['pattern']}{ci}",
                             "group": f"group{g:02d}", "split": str(split_of[g]), "n_images": n})
    labels = np.repeat(np.arange(len(rows), dtype=np.int64), n)
    classes = pd.DataFrame(rows, columns=["class_id", "name", "group", "split", "n_images"])
    meta = {"source": "shapes", "generator_version": GENERATOR_VERSION, "seed": int(seed),
            "options": opts, "split_groups": dict(zip(SPLITS, opts["split"], strict=True))}
    return np.concatenate(images), labels, classes, meta


@declare(OPTIONS, check=resolve_options)
def prepare(name: str, options: dict, raw_dir: Path, out_dir: Path, seed: int) -> None:
    """Generate the shapes dataset into `out_dir` (nothing to download; raw_dir is unused)."""
    images, labels, classes, meta = generate(options, seed, dataset=name)
    write_prepared(out_dir, images, labels, classes, meta)
