"""The scenes renderer against analytic geometry, and the prepared dataset it writes."""

import numpy as np
import pytest

from mtml.data.scenes import (
    BOX,
    SPHERE,
    Geometry,
    camera_rotation,
    dense_labels,
    generate,
    pixel_rays,
    prepare,
    project,
    trace,
    vanishing_points,
)
from mtml.data.storage import load_prepared
from mtml.errors import UserError

TINY = {"environments": [2, 1, 1], "room_types": [2, 1, 1], "images_per_class": 3, "image_size": 16}


def _geometry(yaw=0.0, pitch=0.0, roll=0.0, fov=60.0, cam=(2.0, 1.5, 0.5), room=(4.0, 3.0, 6.0),
              objects=()) -> Geometry:
    """One image; objects are (kind, centre, half extents)."""
    types = np.zeros((1, 4), np.int64)
    centre, half = np.zeros((1, 4, 3)), np.zeros((1, 4, 3))
    for m, (kind, c, h) in enumerate(objects):
        types[0, m], centre[0, m], half[0, m] = kind, c, h
    return Geometry(np.array([cam], float), camera_rotation(yaw, pitch, roll)[None],
                    np.array([np.tan(np.radians(fov) / 2)]), np.array([room], float), types, centre, half)


def test_camera_rotation_is_a_right_handed_orthonormal_frame():
    rot = camera_rotation(np.radians([10, -25]), np.radians([15, 5]), np.radians([3, -6]))
    for r in rot:
        assert np.allclose(r.T @ r, np.eye(3))
        assert np.isclose(np.linalg.det(r), 1.0)
    level = camera_rotation(0.0, 0.0, 0.0)
    assert np.allclose(level[:, 2], [0, 0, 1])   # looks along +z
    assert np.allclose(level[:, 1], [0, -1, 0])  # image down is world down


def test_depth_of_a_frontal_wall_is_its_distance_and_every_hit_lies_on_its_plane():
    geom = _geometry()  # level camera at z = 0.5 looking at the wall z = 6
    size = 16
    depth, _ = dense_labels(geom, size)
    hits = trace(geom, pixel_rays(size, geom.tan_half))
    far_wall = hits.surface[0] == 5
    assert far_wall.sum() > 20
    assert np.allclose(depth[0, 0].reshape(-1)[far_wall], 6.0 - 0.5)
    # Each surface: the hit point is on its plane and z-depth is its distance along the axis.
    plane = {0: (1, 0.0), 1: (1, 3.0), 2: (0, 0.0), 3: (0, 4.0), 4: (2, 0.0), 5: (2, 6.0)}
    fwd = geom.rot[0][:, 2]
    for sid, (axis, value) in plane.items():
        sel = hits.surface[0] == sid
        if sel.any():
            assert np.allclose(hits.point[0, sel, axis], value)
    assert np.allclose((hits.point[0] - geom.cam_pos[0]) @ fwd, hits.t[0])


def test_depth_of_the_floor_matches_the_ray_plane_intersection_for_a_tilted_camera():
    geom = _geometry(yaw=np.radians(20), pitch=np.radians(25), roll=np.radians(4))
    size = 12
    depth, _ = dense_labels(geom, size)
    rays = pixel_rays(size, geom.tan_half)[0]          # camera frame, z = 1
    world = rays @ geom.rot[0].T                       # R d
    t_floor = -geom.cam_pos[0, 1] / world[:, 1]        # o_y + t d_y = 0
    hits = trace(geom, pixel_rays(size, geom.tan_half))
    floor = hits.surface[0] == 0
    assert floor.sum() > 10
    assert np.allclose(depth[0, 0].reshape(-1)[floor], t_floor[floor])
    # The hit point projects back onto its pixel centre.
    uv = project(hits.point[0, floor], geom.cam_pos[0], geom.rot[0], geom.tan_half[0])
    assert np.allclose(uv, rays[floor, :2] / geom.tan_half[0])


def test_depth_is_z_depth_of_the_closed_form_floor_and_not_the_ray_length():
    # Level camera at height h: the floor seen at normalised image row v > 0 (down) lies at
    # z-depth h / (v tan(fov/2)), whatever the column; its distance along the ray is longer.
    h, fov, size = 1.5, 60.0, 16
    geom = _geometry(cam=(2.0, h, 0.5), fov=fov)
    depth, _ = dense_labels(geom, size)
    hits = trace(geom, pixel_rays(size, geom.tan_half))
    floor = (hits.surface[0] == 0).reshape(size, size)
    centres = (np.arange(size) + 0.5) * 2 / size - 1      # pixel centres in [-1, 1]
    v, u = np.meshgrid(centres, centres, indexing="ij")
    tan_half = np.tan(np.radians(fov) / 2)
    expected = h / (v * tan_half)
    assert floor.sum() > 20 and (v[floor] > 0).all()
    assert np.allclose(depth[0, 0][floor], expected[floor])
    ray_length = expected * np.sqrt(1 + (u**2 + v**2) * tan_half**2)
    off_axis = floor & (np.abs(u) > 0.5)
    assert off_axis.any() and (ray_length[off_axis] > depth[0, 0][off_axis] + 0.05).all()


def test_normals_are_unit_and_match_the_hit_surface():
    sphere_c, r = np.array([1.5, 0.5, 3.0]), 0.5
    geom = _geometry(pitch=np.radians(15), objects=[(SPHERE, sphere_c, (r, r, r)),
                                                   (BOX, (2.8, 0.4, 3.5), (0.4, 0.4, 0.3))])
    size = 24
    _, normals = dense_labels(geom, size)
    n = normals[0].reshape(3, -1).T                     # camera frame
    assert np.allclose(np.linalg.norm(n, axis=1), 1.0)
    hits = trace(geom, pixel_rays(size, geom.tan_half))
    sid, world_n = hits.surface[0], n @ geom.rot[0].T  # back to the world frame
    expected = {0: [0, 1, 0], 1: [0, -1, 0], 2: [1, 0, 0], 3: [-1, 0, 0], 4: [0, 0, 1], 5: [0, 0, -1]}
    for s, e in expected.items():
        if (sid == s).any():
            assert np.allclose(world_n[sid == s], e)
    on_sphere = sid == 6
    assert on_sphere.sum() > 5
    assert np.allclose(world_n[on_sphere], (hits.point[0, on_sphere] - sphere_c) / r)
    on_box = sid == 7
    assert on_box.sum() > 5
    # Box normals are axis-aligned and face the camera.
    assert np.allclose(np.abs(world_n[on_box]).max(1), 1.0)
    view = hits.point[0, on_box] - geom.cam_pos[0]
    assert (np.einsum("ij,ij->i", world_n[on_box], view) < 0).all()


@pytest.mark.parametrize("seed", range(4))
def test_a_vanishing_point_is_the_projection_of_a_far_point_along_its_direction(seed):
    rng = np.random.default_rng(seed)
    yaw, pitch, roll = np.radians(rng.uniform(-30, 30)), np.radians(rng.uniform(5, 22)), np.radians(rng.normal(0, 3))
    rot = camera_rotation(yaw, pitch, roll)
    tan_half = np.tan(np.radians(rng.uniform(50, 100)) / 2)
    h = vanishing_points(rot[None], tan_half)[0]
    cam = np.array([1.0, 1.5, 0.3])
    assert np.allclose(np.linalg.norm(h, axis=1), 1.0)
    for k in range(3):
        assert h[k, k] > 0.3  # the sign rule keeps the defining component far from zero
        direction = np.eye(3)[k]
        if (rot.T @ direction)[2] < 0:
            direction = -direction  # the end of the axis that lies in front of the camera
        if abs((rot.T @ direction)[2]) < 1e-3:
            continue
        far = project(cam + 1e7 * direction, cam, rot, tan_half)
        assert np.allclose(h[k, :2] / h[k, 2], far, rtol=1e-5, atol=1e-5)


def test_vanishing_points_of_a_turned_and_of_a_tilted_camera_in_closed_form():
    tan_half = np.tan(np.radians(30))
    yaw = np.radians(20)  # turned towards +x (the camera's left): the room's z axis vanishes right of centre
    h = vanishing_points(camera_rotation(yaw, 0.0, 0.0)[None], tan_half)[0]
    assert np.allclose(h[2, :2] / h[2, 2], [np.tan(yaw) / tan_half, 0.0])
    assert abs(h[1, 2]) < 1e-12 and abs(h[0, 1]) < 1e-12  # vertical lines stay parallel in the image
    pitch = np.radians(15)  # looking down: the horizon rises, verticals meet far below the centre
    h = vanishing_points(camera_rotation(0.0, pitch, 0.0)[None], tan_half)[0]
    assert np.allclose(h[2, :2] / h[2, 2], [0.0, -np.tan(pitch) / tan_half])
    assert np.allclose(h[1, :2] / h[1, 2], [0.0, 1.0 / (np.tan(pitch) * tan_half)])


def test_points_at_infinity_are_finite_homogeneous_vectors():
    rot = camera_rotation(0.0, 0.0, 0.0)  # x and y axes parallel to the image plane
    h = vanishing_points(rot[None], np.tan(np.radians(30)))[0]
    assert np.allclose(h, [[1, 0, 0], [0, 1, 0], [0, 0, 1]], atol=1e-12)
    assert np.isfinite(h).all()


def test_dataset_splits_labels_and_determinism(tmp_path):
    images, labels, classes, meta, extras = generate(TINY, seed=3)
    n = len(images)
    assert images.shape == (n, 3, 16, 16) and images.dtype == np.uint8
    assert extras["depth"].shape == (n, 1, 16, 16) and extras["normals"].shape == (n, 3, 16, 16)
    assert extras["vp"].shape == (n, 3, 3)
    assert np.isfinite(extras["depth"].astype(np.float32)).all() and (extras["depth"] > 0).all()
    norms = np.linalg.norm(extras["normals"].astype(np.float32), axis=1)
    assert np.allclose(norms, 1.0, atol=2e-3)
    # Environments and room types of different splits are disjoint.
    env_split = {e["environment"]: e["split"] for e in meta["environments"]}
    room_split = {r["room_type"]: r["split"] for r in meta["room_types"]}
    env_names = np.array([f"env{e:02d}" for e in extras["environment"]])
    for i in range(n):
        assert env_split[env_names[i]] == room_split[int(extras["room_type"][i])]
        assert classes.loc[labels[i], "group"] == env_names[i]
    assert set(classes.groupby("split")["group"].nunique()) == {2, 1}
    again = generate(TINY, seed=3)
    assert np.array_equal(again[0], images) and np.array_equal(again[4]["depth"], extras["depth"])
    assert not np.array_equal(generate(TINY, seed=4)[0], images)

    prepare("scenes", TINY, tmp_path / "raw", tmp_path / "scenes", seed=3)
    loaded = load_prepared(tmp_path / "scenes")
    assert set(loaded.extras) == {"depth", "normals", "vp", "room_type", "environment"}
    assert np.array_equal(loaded.extras["vp"], extras["vp"])
    assert np.array_equal(loaded.images, images)


def test_styles_share_room_types_but_not_environments():
    std = generate(TINY, seed=0)[3]
    shifted = generate({**TINY, "style": "shifted"}, seed=0)[3]
    assert std["room_types"] == shifted["room_types"]
    assert all(s["fov_deg"] >= 80 for s in shifted["environments"])
    assert all(s["fov_deg"] <= 80 for s in std["environments"])


@pytest.mark.parametrize("options, key", [
    ({"colour": 1}, "datasets.scenes.options.colour"),
    ({"style": "odd"}, "datasets.scenes.options.style"),
    ({"environments": [0, 1, 1]}, "datasets.scenes.options.environments"),
    ({"room_types": [2, 0, 1]}, "datasets.scenes.options.room_types"),
    ({"image_size": 4}, "datasets.scenes.options.image_size"),
])
def test_bad_options_name_the_key(options, key):
    with pytest.raises(UserError, match=key.replace(".", r"\.")):
        generate(options, seed=0)
