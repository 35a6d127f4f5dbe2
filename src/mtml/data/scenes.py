"""`scenes`: procedurally rendered rooms with exact labels for four high-level tasks.

Nothing is downloaded. Every image is a box-shaped room seen from a camera inside it, with
two to four pieces of furniture (boxes, spheres) on the floor. Rendering is vectorised numpy
ray casting, so every label is exact:

- depth: per-pixel z-depth in metres (distance along the camera's optical axis),
- normals: per-pixel unit surface normals in the camera frame (x right, y down, z forward),
- vanishing points: the image of the room's three directions (x, y = up, z), stored as unit
  homogeneous vectors h = normalise([u, v, 1]) * s in normalised image coordinates
  ([-1, 1] spans the image), so a point at infinity (a direction parallel to the image
  plane) is simply h[2] = 0. The sign is fixed by h[k] >= 0 for the vanishing point of room
  axis k; the camera's bounded yaw, pitch and roll keep that component far from zero, so
  the target never jumps. The image position is h[:2] / h[2],
- scene class: a *room type*, i.e. a furniture set and its layout on the floor.

An *environment* is a domain: a palette, wall and floor textures, lighting, haze, room
proportions and the camera's field of view. The class table has one row per (environment,
room type): `group` is the environment, so splits are by environment; room types are split
too, and an environment of split s holds exactly the room types of split s. Meta-train and
meta-test therefore use disjoint environments and disjoint scene classes. `style: shifted`
draws environments from another family (saturated dark palettes, diagonal and dotted
textures, coloured light, thick haze, long narrow rooms, wide lenses): the cross-domain set.

Prepared form (besides images/labels/classes): `depth.npy` float16 [N,1,H,W],
`normals.npy` float16 [N,3,H,W], `vp.npy` float32 [N,3,3], `room_type.npy` and
`environment.npy` int64 [N]; meta.json lists every environment's and room type's settings.

Randomness is keyed by (seed, 'scenes', style, environment, room type), room types by
(seed, 'scenes', 'rooms', index) only, so both styles share one room-type table.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass
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
MAX_OBJECTS = 4
RAYS_PER_CHUNK = 1 << 17
NOISE_SIGMA = 2.0 / 255.0

OPTIONS = {
    "style": Option(str, "standard", "standard | shifted (another family of environments)",
                    choices=STYLES),
    "image_size": Option(int, 32, "images are image_size x image_size RGB", min=8),
    "environments": Option(list, [12, 4, 4], "environments per split [train, val, test]",
                           items=int, min=0, length=3),
    "room_types": Option(list, [12, 5, 5], "scene classes per split [train, val, test]",
                         items=int, min=0, length=3),
    "images_per_class": Option(int, 20, "images per (environment, room type)", min=1),
    "supersample": Option(int, 2, "RGB anti-aliasing: supersample x supersample rays per pixel", min=1),
    "noise": Option(float, 1.0, "x sensor noise (sigma 2/255)", min=0),
}
DEFAULTS = defaults(OPTIONS)

# Texture patterns (walls and floors).
PLAIN, VSTRIPES, HSTRIPES, CHECKER, DIAGONAL, DOTS = range(6)
PATTERN_NAMES = ("plain", "vstripes", "hstripes", "checker", "diagonal", "dots")

# Environment families: ranges of each setting (uniform), allowed patterns.
FAMILIES = {
    "standard": {
        "fov": (50.0, 80.0), "width": (3.0, 6.0), "height": (2.4, 3.4), "depth": (4.5, 8.0),
        "wall_sat": (0.05, 0.4), "wall_val": (0.55, 0.9), "floor_val": (0.3, 0.6),
        "object_sat": (0.45, 0.85), "wall_patterns": (PLAIN, VSTRIPES, HSTRIPES, CHECKER),
        "floor_patterns": (PLAIN, CHECKER, VSTRIPES), "light_tint": 0.08, "haze": (0.0, 0.04),
    },
    "shifted": {
        "fov": (80.0, 100.0), "width": (2.2, 3.4), "height": (2.8, 4.0), "depth": (7.0, 11.0),
        "wall_sat": (0.5, 0.9), "wall_val": (0.25, 0.5), "floor_val": (0.15, 0.35),
        "object_sat": (0.7, 1.0), "wall_patterns": (DIAGONAL, DOTS),
        "floor_patterns": (DIAGONAL, DOTS), "light_tint": 0.35, "haze": (0.05, 0.12),
    },
}

# Furniture kinds: (width, height, depth) ranges in metres; spheres use radius = width / 2.
FURNITURE = {
    "table": ((0.8, 1.4), (0.5, 0.8), (0.6, 1.0)),
    "cabinet": ((0.5, 0.9), (1.2, 2.0), (0.4, 0.6)),
    "cube": ((0.4, 0.7), None, None),
    "bed": ((1.1, 1.6), (0.35, 0.55), (1.5, 1.9)),
    "ball": ((0.4, 1.0), None, None),
}
KINDS = tuple(FURNITURE)
BOX, SPHERE = 1, 2


# --------------------------------------------------------------------------- options


def _key(dataset: str, key: str) -> str:
    return f"params key 'datasets.{dataset}.options.{key}'"


def resolve_options(options: dict, dataset: str = "scenes") -> dict:
    """Fill defaults, reject unknown keys and bad values with a UserError naming the key."""
    opts = check_options(dataset, dict(options or {}), OPTIONS)
    for key in ("image_size", "images_per_class", "supersample"):
        opts[key] = int(opts[key])
    for key in ("environments", "room_types"):
        opts[key] = [int(v) for v in opts[key]]
        if opts[key][0] < 1:
            raise UserError(f"{_key(dataset, key)} gives the train split nothing; got {opts[key]!r}")
    for split, e, r in zip(SPLITS, opts["environments"], opts["room_types"]):
        if e > 0 and r == 0:
            raise UserError(f"{_key(dataset, 'room_types')} gives split {split!r} no room types "
                            f"but {_key(dataset, 'environments')} gives it {e} environments")
    opts["noise"] = float(opts["noise"])
    return opts


# --------------------------------------------------------------------------- camera geometry


def camera_rotation(yaw, pitch, roll) -> np.ndarray:
    """World-from-camera rotations [..., 3, 3]; columns are the camera's right, down, forward.

    World: y up, the camera looks along +z at yaw = pitch = roll = 0. Positive pitch looks
    down, positive yaw turns towards +x, roll turns about the optical axis. Radians.
    """
    yaw, pitch, roll = np.broadcast_arrays(*(np.asarray(a, dtype=np.float64) for a in (yaw, pitch, roll)))
    fwd = np.stack([np.sin(yaw) * np.cos(pitch), -np.sin(pitch), np.cos(yaw) * np.cos(pitch)], -1)
    up = np.array([0.0, 1.0, 0.0])
    down = -(up - (fwd @ up)[..., None] * fwd)
    down /= np.linalg.norm(down, axis=-1, keepdims=True)
    right = np.cross(down, fwd)  # (right, down, forward) is right-handed
    c, s = np.cos(roll)[..., None], np.sin(roll)[..., None]
    right, down = c * right + s * down, -s * right + c * down
    return np.stack([right, down, fwd], -1)


def pixel_rays(size: int, tan_half: np.ndarray, supersample: int = 1) -> np.ndarray:
    """Camera-frame ray directions [B, P, 3] through pixel (sub)centres, with z = 1.

    Pixel p = row * W + col (row-major); with supersampling the (size*ss)^2 sub-pixels are
    in row-major order of the finer grid. A ray's parameter t is therefore the z-depth.
    """
    n = size * supersample
    grid = (np.arange(n) + 0.5) * (2.0 / n) - 1.0  # normalised image coordinates in (-1, 1)
    v, u = np.meshgrid(grid, grid, indexing="ij")
    tan_half = np.asarray(tan_half, dtype=np.float64).reshape(-1, 1)
    rays = np.empty((tan_half.shape[0], n * n, 3))
    rays[..., 0] = u.reshape(1, -1) * tan_half
    rays[..., 1] = v.reshape(1, -1) * tan_half
    rays[..., 2] = 1.0
    return rays


def project(points: np.ndarray, cam_pos: np.ndarray, rot: np.ndarray, tan_half) -> np.ndarray:
    """Normalised image coordinates [..., 2] of world points [..., 3] (in front of the camera)."""
    cam = np.einsum("...ji,...j->...i", rot, points - cam_pos)  # R^T (p - c)
    return cam[..., :2] / (cam[..., 2:] * np.asarray(tan_half)[..., None])


def vanishing_points(rot: np.ndarray, tan_half) -> np.ndarray:
    """Unit homogeneous vanishing points [B, 3 (room axis), 3] of the world axes x, y, z.

    h ~ K R^T e_k with K = diag(1/tan_half, 1/tan_half, 1), normalised, sign so h[k] >= 0.
    """
    tan_half = np.asarray(tan_half, dtype=np.float64).reshape(-1, 1, 1)
    dirs = np.asarray(rot).reshape(-1, 3, 3)  # row k of R = R^T e_k: world axis k in the camera frame
    h = dirs * np.concatenate([1.0 / tan_half, 1.0 / tan_half, np.ones_like(tan_half)], -1)
    h /= np.linalg.norm(h, axis=-1, keepdims=True)
    sign = np.where(np.diagonal(h, axis1=-2, axis2=-1) < 0, -1.0, 1.0)
    return h * sign[..., None]


# --------------------------------------------------------------------------- scenes


@dataclass
class Geometry:
    """Everything a ray needs, per image (B images, M object slots)."""

    cam_pos: np.ndarray   # [B, 3]
    rot: np.ndarray       # [B, 3, 3] world-from-camera
    tan_half: np.ndarray  # [B] tan(fov / 2)
    room: np.ndarray      # [B, 3] the room spans [0, W] x [0, H] x [0, D]
    obj_type: np.ndarray  # [B, M] 0 none, BOX, SPHERE
    obj_centre: np.ndarray  # [B, M, 3]
    obj_half: np.ndarray  # [B, M, 3] half extents (spheres: radius in [..., 0])

    def take(self, sl) -> Geometry:
        return Geometry(*(getattr(self, f)[sl] for f in self.__dataclass_fields__))


@dataclass
class Hits:
    t: np.ndarray        # [B, P] z-depth of the first hit
    normal: np.ndarray   # [B, P, 3] world-frame unit normal, facing the camera
    surface: np.ndarray  # [B, P] 0 floor, 1 ceiling, 2/3 walls x=0/x=W, 4/5 walls z=0/z=D, 6+m object m
    point: np.ndarray    # [B, P, 3] world hit point


def trace(geom: Geometry, rays_cam: np.ndarray) -> Hits:
    """First hit of each camera ray (camera frame, z = 1) inside the room.

    Works on x, y, z component arrays [B, P] (numpy reduces slowly over a length-3 axis).
    A planar hit records its normal as (axis, sign); sphere normals come from the hit point.
    """
    d = np.einsum("bij,bpj->ibp", geom.rot, rays_cam)      # [3, B, P] world directions
    d = np.where(np.abs(d) < 1e-12, 1e-12, d)               # no division by exact zero
    inv = 1.0 / d
    o = geom.cam_pos.T[:, :, None]                          # [3, B, 1]
    # Room interior: the ray leaves the box through the nearest exit plane.
    t_axes = (np.where(d > 0, geom.room.T[:, :, None], 0.0) - o) * inv
    t = t_axes.min(0)
    axis = t_axes.argmin(0)
    positive = np.take_along_axis(d, axis[None], 0)[0] > 0
    surface = np.array([2, 0, 4])[axis] + positive          # floor 0 / ceiling 1, x-walls 2/3, z-walls 4/5
    sign = np.where(positive, -1.0, 1.0)                    # normals face into the room

    for m in range(geom.obj_type.shape[1]):
        kind = geom.obj_type[:, m][:, None]                 # [B, 1]
        c = geom.obj_centre[:, m].T[:, :, None]             # [3, B, 1]
        half = geom.obj_half[:, m].T[:, :, None]
        t_obj = np.full_like(t, np.inf)
        if (kind == BOX).any():  # axis-aligned box: slab method
            t1, t2 = (c - half - o) * inv, (c + half - o) * inv
            t_in = np.minimum(t1, t2)
            t_near, t_far = t_in.max(0), np.maximum(t1, t2).min(0)
            box_hit = (kind == BOX) & (t_near <= t_far) & (t_near > 1e-9)
            t_obj = np.where(box_hit, t_near, t_obj)
            b_axis = t_in.argmax(0)
        if (kind == SPHERE).any():  # sphere: the smaller root of |o + t d - c|^2 = r^2
            r = half[0]
            oc = o - c
            a = (d * d).sum(0)
            bq = (oc * d).sum(0)
            disc = bq * bq - a * ((oc * oc).sum(0) - r * r)
            t_sph = (-bq - np.sqrt(np.maximum(disc, 0.0))) / a
            sph_hit = (kind == SPHERE) & (disc >= 0) & (t_sph > 1e-9)
            t_obj = np.where(sph_hit, t_sph, t_obj)
        closer = t_obj < t
        if not closer.any():
            continue
        t = np.where(closer, t_obj, t)
        surface = np.where(closer, 6 + m, surface)
        if (kind == BOX).any():
            box = closer & (kind == BOX)
            axis = np.where(box, b_axis, axis)
            sign = np.where(box, np.where(np.take_along_axis(d, b_axis[None], 0)[0] > 0, -1.0, 1.0), sign)
    point = o + t * d                                       # [3, B, P]
    normal = np.stack([np.where(axis == k, sign, 0.0) for k in range(3)], -1)
    for m in range(geom.obj_type.shape[1]):
        sphere = (surface == 6 + m) & (geom.obj_type[:, m] == SPHERE)[:, None]
        if sphere.any():
            c = geom.obj_centre[:, m][:, None, :]
            r = np.maximum(geom.obj_half[:, m, 0], 1e-12)[:, None, None]
            normal = np.where(sphere[..., None], (np.moveaxis(point, 0, -1) - c) / r, normal)
    return Hits(t, normal, surface, np.moveaxis(point, 0, -1))


def dense_labels(geom: Geometry, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(depth [B, 1, H, W] metres, normals [B, 3, H, W] camera frame) at pixel centres."""
    hits = trace(geom, pixel_rays(size, geom.tan_half))
    normals = np.einsum("bji,bpj->bpi", geom.rot, hits.normal)  # R^T n
    b = hits.t.shape[0]
    return (hits.t.reshape(b, 1, size, size),
            normals.reshape(b, size, size, 3).transpose(0, 3, 1, 2))


# --------------------------------------------------------------------------- appearance


def _pattern(kind: np.ndarray, s: np.ndarray, y: np.ndarray, freq: np.ndarray) -> np.ndarray:
    """1 where a texture's dark part is, for per-ray pattern kinds (PLAIN ... DOTS)."""
    a, b = np.sin(2 * np.pi * freq * s), np.sin(2 * np.pi * freq * y)
    return np.select(
        [kind == VSTRIPES, kind == HSTRIPES, kind == CHECKER, kind == DIAGONAL, kind == DOTS],
        [a > 0, b > 0, a * b > 0, np.sin(2 * np.pi * freq * (s + y) / 1.4) > 0, a * b > 0.5],
        0.0,
    ).astype(np.float64)


def shade(hits: Hits, geom: Geometry, look: dict) -> np.ndarray:
    """Linear RGB [B, P, 3] in [0, 1]: textured albedo x (ambient + key light + ceiling lamp),
    then haze. `look` holds per-image arrays (see `_appearance`)."""
    sid, p = hits.surface, hits.point
    b_idx = np.arange(sid.shape[0])[:, None]
    obj = np.clip(sid - 6, 0, MAX_OBJECTS - 1)
    albedo = np.select(
        [(sid == 0)[..., None], (sid == 1)[..., None], (sid < 6)[..., None]],
        [look["floor"][:, None], look["ceiling"][:, None], look["wall"][:, None]],
        look["objects"][b_idx, look["obj_colour"][b_idx, obj]],
    )
    # Walls: texture in (along-wall, height); floor: in (x, z).
    along = np.where(sid < 4, p[..., 2], p[..., 0])
    wall_dark = _pattern(look["wall_pattern"][:, None], along, p[..., 1], look["wall_freq"][:, None])
    floor_dark = _pattern(look["floor_pattern"][:, None], p[..., 0], p[..., 2], look["floor_freq"][:, None])
    dark = np.where(sid == 0, floor_dark * look["floor_contrast"][:, None],
                    np.where((sid >= 2) & (sid < 6), wall_dark * look["wall_contrast"][:, None], 0.0))
    albedo = albedo * (1.0 - dark[..., None])
    n = hits.normal
    key = np.clip((n * look["light_dir"][:, None]).sum(-1), 0, None) * look["diffuse"][:, None]
    lamp_pos = geom.room * np.array([0.5, 0.97, 0.5])  # a lamp under the ceiling's centre
    to_lamp = lamp_pos[:, None] - p
    dist2 = (to_lamp * to_lamp).sum(-1)
    lamp = np.clip((n * to_lamp).sum(-1), 0, None) / np.sqrt(dist2) / (1.0 + dist2 / 4.0)
    light = (look["ambient"][:, None] + key + look["lamp_power"][:, None] * lamp)[..., None]
    rgb = albedo * light * look["light_colour"][:, None]
    fog = np.exp(-look["haze"][:, None] * hits.t)[..., None]
    return np.clip(rgb * fog + look["fog_colour"][:, None] * (1 - fog), 0.0, 1.0)


def render_rgb(geom: Geometry, look: dict, size: int, supersample: int) -> np.ndarray:
    """Float RGB [B, 3, H, W] in [0, 1], supersample^2 rays averaged per pixel."""
    hits = trace(geom, pixel_rays(size, geom.tan_half, supersample))
    rgb = shade(hits, geom, look)
    b, ss = rgb.shape[0], supersample
    rgb = rgb.reshape(b, size, ss, size, ss, 3).mean((2, 4))
    return rgb.transpose(0, 3, 1, 2)


# --------------------------------------------------------------------------- sampling


def _hsv(h, s, v) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, float(np.clip(s, 0, 1)), float(np.clip(v, 0, 1))))


def sample_environment(rng: np.random.Generator, style: str) -> dict:
    """One environment (domain): room proportions, lens, palette, textures, light."""
    f = FAMILIES[style]
    u = lambda lo_hi: float(rng.uniform(*lo_hi))  # noqa: E731
    hue = rng.uniform()
    scheme = rng.choice([0.08, 0.5, 1 / 3])  # analogous, complementary, triad
    objects = [_hsv(hue + scheme * (k + 1) + rng.normal(0, 0.03), u(f["object_sat"]), rng.uniform(0.5, 0.95))
               for k in range(MAX_OBJECTS)]
    elevation, azimuth = np.radians(rng.uniform(35, 80)), rng.uniform(0, 2 * np.pi)
    tint = _hsv(rng.uniform(), 1.0, 1.0)
    light_colour = (1 - f["light_tint"]) + f["light_tint"] * tint
    return {
        "fov_deg": u(f["fov"]),
        "room": [u(f["width"]), u(f["height"]), u(f["depth"])],
        "wall": _hsv(hue, u(f["wall_sat"]), u(f["wall_val"])).tolist(),
        "floor": _hsv(hue + rng.normal(0, 0.1), u(f["wall_sat"]) + 0.1, u(f["floor_val"])).tolist(),
        "ceiling": _hsv(hue, 0.05, rng.uniform(0.75, 0.95)).tolist(),
        "objects": [c.tolist() for c in objects],
        "wall_pattern": int(rng.choice(f["wall_patterns"])),
        "wall_freq": float(rng.uniform(0.8, 2.5)),
        "wall_contrast": float(rng.uniform(0.12, 0.35)),
        "floor_pattern": int(rng.choice(f["floor_patterns"])),
        "floor_freq": float(rng.uniform(0.6, 1.8)),
        "floor_contrast": float(rng.uniform(0.15, 0.4)),
        "light_dir": [float(np.cos(elevation) * np.cos(azimuth)), float(np.sin(elevation)),
                      float(np.cos(elevation) * np.sin(azimuth))],
        "ambient": float(rng.uniform(0.25, 0.45)),
        "diffuse": float(rng.uniform(0.35, 0.6)),
        "lamp_power": float(rng.uniform(0.5, 1.5)),
        "light_colour": light_colour.tolist(),
        "haze": u(f["haze"]),
        "fog_colour": (_hsv(hue + 0.5, 0.2, 0.6) * light_colour).tolist(),
    }


def sample_room_type(rng: np.random.Generator) -> list[dict]:
    """A room type: 2-4 furniture pieces, each with a kind, size, floor anchor and colour slot.

    Anchors are fractions of the room's width and depth; rejection keeps footprints apart in
    a nominal 4.5 m x 6 m room.
    """
    objects: list[dict] = []
    n = int(rng.integers(2, MAX_OBJECTS + 1))
    while len(objects) < n:
        kind = KINDS[rng.integers(len(KINDS))]
        w_rng, h_rng, d_rng = FURNITURE[kind]
        w = rng.uniform(*w_rng)
        size = [w, w if h_rng is None else rng.uniform(*h_rng), w if d_rng is None else rng.uniform(*d_rng)]
        for _ in range(50):
            anchor = [rng.uniform(0.15, 0.85), rng.uniform(0.45, 0.92)]
            pos = np.array(anchor) * [4.5, 6.0]
            radius = 0.5 * np.hypot(size[0], size[2])
            if all(np.hypot(*(pos - np.array(o["anchor"]) * [4.5, 6.0])) > 0.8 * (radius + o["radius"])
                   for o in objects):
                break
        objects.append({"kind": kind, "size": [float(v) for v in size], "anchor": [float(a) for a in anchor],
                        "radius": float(radius), "colour": int(rng.integers(MAX_OBJECTS))})
    return objects


def _appearance(envs: list[dict], images: int) -> dict:
    """Per-image appearance arrays for `images` images of each environment in `envs`."""
    def rep(key, dtype=np.float64):
        return np.repeat(np.asarray([e[key] for e in envs], dtype=dtype), images, axis=0)

    look = {k: rep(k) for k in ("wall", "floor", "ceiling", "objects", "wall_freq", "wall_contrast",
                                "floor_freq", "floor_contrast", "light_dir", "ambient", "diffuse",
                                "lamp_power", "light_colour", "haze", "fog_colour")}
    look["wall_pattern"] = rep("wall_pattern", np.int64)
    look["floor_pattern"] = rep("floor_pattern", np.int64)
    return look


def sample_images(rng: np.random.Generator, env: dict, room_type: list[dict], n: int):
    """Geometry of `n` views of one room type in one environment, and object colour slots."""
    width, height, depth = env["room"]
    yaw = np.radians(rng.uniform(-30, 30, n))
    pitch = np.radians(rng.uniform(5, 22, n))
    roll = np.radians(np.clip(rng.normal(0, 3, n), -8, 8))
    cam = np.stack([rng.uniform(0.3, 0.7, n) * width,
                    rng.uniform(1.2, min(1.8, height - 0.4), n),
                    rng.uniform(0.15, 0.5, n)], -1)
    obj_type = np.zeros((n, MAX_OBJECTS), np.int64)
    centre = np.zeros((n, MAX_OBJECTS, 3))
    half = np.zeros((n, MAX_OBJECTS, 3))
    colour = np.zeros((n, MAX_OBJECTS), np.int64)
    for m, o in enumerate(room_type):
        size = np.asarray(o["size"]) * np.exp(rng.normal(0, 0.08, (n, 3)))
        if o["kind"] in ("cube", "ball"):
            size[:] = size[:, :1]  # keep cubes cubic and balls round
        anchor = np.asarray(o["anchor"]) + rng.normal(0, 0.03, (n, 2))
        hx, hz = size[:, 0] / 2, size[:, 2] / 2
        x = np.clip(anchor[:, 0] * width, hx + 0.05, np.maximum(width - hx - 0.05, hx + 0.05))
        z = np.clip(anchor[:, 1] * depth, hz + 0.9, np.maximum(depth - hz - 0.05, hz + 0.9))
        obj_type[:, m] = SPHERE if o["kind"] == "ball" else BOX
        centre[:, m] = np.stack([x, size[:, 1] / 2, z], -1)
        half[:, m] = size / 2
        colour[:, m] = o["colour"]
    geom = Geometry(cam, camera_rotation(yaw, pitch, roll),
                    np.full(n, np.tan(np.radians(env["fov_deg"]) / 2)), np.tile(env["room"], (n, 1)),
                    obj_type, centre, half)
    return geom, colour


def _concat(geoms: list[Geometry]) -> Geometry:
    return Geometry(*(np.concatenate([getattr(g, f) for g in geoms]) for f in Geometry.__dataclass_fields__))


def render_batch(geom: Geometry, look: dict, size: int, supersample: int, noise: float,
                 rng: np.random.Generator):
    """(uint8 RGB [B,3,H,W], depth, normals, vanishing points) for a batch, in chunks.

    Chunks group images whose object slots hold the same kinds, so `trace` skips the
    primitives (and empty slots) a chunk does not use.
    """
    b = geom.cam_pos.shape[0]
    chunk = max(1, RAYS_PER_CHUNK // (size * size * (supersample * supersample + 1)))
    images = np.empty((b, 3, size, size), np.uint8)
    depth = np.empty((b, 1, size, size), np.float16)
    normals = np.empty((b, 3, size, size), np.float16)
    order = np.lexsort(geom.obj_type.T[::-1])
    for lo in range(0, b, chunk):
        sl = order[lo:lo + chunk]
        g, lk = geom.take(sl), {k: v[sl] for k, v in look.items()}
        rgb = render_rgb(g, lk, size, supersample)
        rgb = rgb + rng.normal(0, NOISE_SIGMA * noise, rgb.shape)
        images[sl] = np.rint(np.clip(rgb, 0, 1) * 255).astype(np.uint8)
        d, n = dense_labels(g, size)
        depth[sl], normals[sl] = d, n
    return images, depth, normals, vanishing_points(geom.rot, geom.tan_half).astype(np.float32)


# --------------------------------------------------------------------------- dataset


def generate(options: dict, seed: int, dataset: str = "scenes"):
    """(images, labels, class table, meta, extras) for `options`; images are ordered by class,
    classes by environment then room type."""
    opts = resolve_options(options, dataset)
    style, size, per_class = opts["style"], opts["image_size"], opts["images_per_class"]
    root = derive_seed(seed, "scenes", style)
    rooms_root = derive_seed(seed, "scenes", "rooms")
    env_split = np.repeat(np.array(SPLITS), opts["environments"])
    room_split = np.repeat(np.array(SPLITS), opts["room_types"])
    rooms = [sample_room_type(np.random.default_rng([rooms_root, r])) for r in range(len(room_split))]
    envs = [sample_environment(np.random.default_rng([root, 0, e]), style) for e in range(len(env_split))]

    rows, geoms, colours, env_of_class, room_of_class = [], [], [], [], []
    for e, env in enumerate(envs):
        for r in np.flatnonzero(room_split == env_split[e]):
            geom, colour = sample_images(np.random.default_rng([root, 1, e, int(r)]), env, rooms[r], per_class)
            geoms.append(geom)
            colours.append(colour)
            env_of_class.append(e)
            room_of_class.append(int(r))
            rows.append({"class_id": len(rows), "name": f"env{e:02d}/room{r:02d}", "group": f"env{e:02d}",
                         "split": str(env_split[e]), "n_images": per_class})
    geom = _concat(geoms)
    look = _appearance([envs[e] for e in env_of_class], per_class)
    look["obj_colour"] = np.concatenate(colours)
    images, depth, normals, vp = render_batch(geom, look, size, opts["supersample"], opts["noise"],
                                              np.random.default_rng([root, 2]))
    labels = np.repeat(np.arange(len(rows), dtype=np.int64), per_class)
    classes = pd.DataFrame(rows, columns=["class_id", "name", "group", "split", "n_images"])
    extras = {"depth": depth, "normals": normals, "vp": vp,
              "room_type": np.repeat(np.asarray(room_of_class, np.int64), per_class),
              "environment": np.repeat(np.asarray(env_of_class, np.int64), per_class)}
    meta = {
        "source": "scenes", "generator_version": GENERATOR_VERSION, "style": style, "seed": int(seed),
        "options": opts,
        "labels": {
            "depth": "z-depth in metres (float16)",
            "normals": "unit surface normals, camera frame x right, y down, z forward (float16)",
            "vp": "vanishing points of room axes x, y (up), z: unit homogeneous [u, v, 1]-vectors in "
                  "normalised image coordinates, h[k] >= 0 for axis k; position = h[:2] / h[2]",
            "room_type": "scene class (room type) of each image", "environment": "environment index",
        },
        "environments": [{"environment": f"env{e:02d}", "split": str(env_split[e]),
                          "wall_pattern_name": PATTERN_NAMES[env["wall_pattern"]],
                          "floor_pattern_name": PATTERN_NAMES[env["floor_pattern"]], **env}
                         for e, env in enumerate(envs)],
        "room_types": [{"room_type": r, "split": str(room_split[r]), "objects": rooms[r]}
                       for r in range(len(rooms))],
    }
    return images, labels, classes, meta, extras


@declare(OPTIONS, check=resolve_options)
def prepare(name: str, options: dict, raw_dir: Path, out_dir: Path, seed: int) -> None:
    """Render the scenes dataset into `out_dir` (nothing to download; raw_dir is unused)."""
    images, labels, classes, meta, extras = generate(options, seed, dataset=name)
    write_prepared(out_dir, images, labels, classes, meta, extras=extras)
