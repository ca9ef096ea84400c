import numpy as np
import pytest

from medlvr.corpus.masks import LabelRule, box_of, instances_3d, labelmap_rois, mask_rois, min_speck_px, polygon_mask
from medlvr.corpus.volumes import SliceConfig, select_slices, volume_images


def test_components_boxes_are_pixel_edges_and_specks_dropped():
    m = np.zeros((40, 50), bool)
    m[5:10, 7:20] = True  # 5x13 = 65 px
    m[30:35, 40:45] = True  # 25 px
    m[0, 0] = True  # a 1-px speck
    rois = mask_rois(m, "lesion", min_area=16)
    assert [r.box for r in rois] == [(7.0, 5.0, 20.0, 10.0), (40.0, 30.0, 45.0, 35.0)]
    assert [r.area_px for r in rois] == [65.0, 25.0]
    union = mask_rois(m, "organ", instances=False, min_area=16)
    assert len(union) == 1 and union[0].box == (7.0, 5.0, 45.0, 35.0)


def test_diagonal_pixels_are_one_component_8_connectivity():
    m = np.zeros((10, 10), bool)
    for i in range(6):
        m[i + 2, i + 2] = True
    assert len(mask_rois(m, "x", min_area=1)) == 1


def test_hierarchy_rules_see_unions():
    lab = np.zeros((30, 30), np.uint8)
    lab[2:20, 2:20] = 1
    lab[5:9, 5:9] = 2
    lab[12:16, 12:16] = 2
    rules = [LabelRule("kidney", (1, 2)), LabelRule("tumor", (2,), parent="kidney")]
    rois = labelmap_rois(lab, rules, min_area=4)
    kid = [r for r in rois if r.label == "kidney"]
    tum = [r for r in rois if r.label == "tumor"]
    assert [r.box for r in kid] == [(2.0, 2.0, 20.0, 20.0)]
    assert sorted(r.box for r in tum) == [(5.0, 5.0, 9.0, 9.0), (12.0, 12.0, 16.0, 16.0)]
    assert all(r.parent == "kidney" for r in tum)


def test_min_speck_scales_with_area():
    assert min_speck_px((64, 64)) == 16
    assert min_speck_px((1000, 1000)) == 200


def test_polygon_mask_includes_boundary_and_vertices():
    poly = np.array([[10, 20], [30, 20], [30, 40], [10, 40]])
    m = polygon_mask((64, 64), poly)
    assert box_of(m) == (10.0, 20.0, 31.0, 41.0)
    thin = polygon_mask((64, 64), np.array([[5, 5], [5, 9]]))  # a degenerate 2-vertex polygon
    assert box_of(thin) == (5.0, 5.0, 6.0, 10.0)
    # a polygon partly outside the image is cut at the border, not wrapped
    out = polygon_mask((32, 32), np.array([[-10, -10], [10, -10], [10, 10], [-10, 10]]))
    assert box_of(out) == (0.0, 0.0, 11.0, 11.0)


def test_instances_3d_are_stable_and_specks_removed():
    v = np.zeros((6, 20, 20), bool)
    v[1:4, 2:6, 2:6] = True
    v[2:5, 12:16, 12:16] = True
    v[0, 19, 19] = True
    lab, n = instances_3d(v, min_voxels=8)
    assert n == 2 and lab[0, 19, 19] == 0


def _volume():
    z, h, w = 40, 32, 32
    lab = np.zeros((z, h, w), np.uint8)
    lab[5:15, 4:28, 4:28] = 1
    for zi in range(5, 15):  # lesion grows then shrinks: largest at z=9
        r = 6 - abs(zi - 9)
        if r > 0:
            lab[zi, 16 - r:16 + r, 10 - r // 2:10 + r] = 2
    img = np.random.default_rng(0).normal(40, 5, (z, h, w)).astype(np.float32)
    return img, lab


def test_volume_key_slice_is_largest_and_negatives_far_from_targets():
    img, lab = _volume()
    rules = [LabelRule("organ", (1, 2), instances=False), LabelRule("lesion", (2,), parent="organ")]
    cfg = SliceConfig(max_slices_per_volume=4, extra_slices_per_instance=1, negatives_per_volume=2, negative_gap=10)
    ims = volume_images({"": img}, lab, rules, source_path="v.nii", intensity="ct_hu", spacing_zyx=(2.0, 1.0, 1.0), cfg=cfg)
    roles = {im.slice_index: im.attributes["slice_role"] for im in ims}
    assert roles[9] == "key"
    negs = [z for z, r in roles.items() if r == "negative"]
    assert len(negs) == 2 and all(z >= 24 for z in negs)
    key = next(im for im in ims if im.slice_index == 9)
    lesion = [r for r in key.rois if r.label == "lesion"]
    assert lesion[0].box == box_of(lab[9] == 2) and lesion[0].attributes["z_range"] == [5, 14]
    assert all(not im.rois for im in ims if im.attributes["slice_role"] == "negative")
    assert len([r for r in roles.values() if r != "negative"]) <= 4


def test_volume_percentile_window_per_channel_and_shape_checks():
    img, lab = _volume()
    img2 = img * 10 + 5
    ims = volume_images({"t2": img, "adc": img2}, lab, [LabelRule("lesion", (2,))], source_path="p.nii",
                        intensity="percentile", cfg=SliceConfig(negatives_per_volume=0))
    w = {im.attributes["sequence"]: im.window for im in ims}
    assert w["t2"] != w["adc"] and all(im.intensity == "window" for im in ims)
    from medlvr.corpus.records import RecordError

    with pytest.raises(RecordError, match="differ"):
        volume_images({"": img[:10]}, lab, [], source_path="x", intensity="ct_hu")
    bad = img.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(RecordError, match="NaN"):
        volume_images({"": bad}, lab, [], source_path="x", intensity="ct_hu")


def test_select_slices_caps_and_orders():
    areas = [np.array([0, 5, 50, 40, 45, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], float)]
    fg = areas[0] > 0
    out = select_slices(areas, fg, SliceConfig(max_slices_per_volume=3, extra_slices_per_instance=2, min_z_gap=2,
                                               negatives_per_volume=1, negative_gap=10))
    assert (2, "key") in out and (4, "extra") in out and sum(1 for _, w in out if w == "negative") == 1


def test_bounding_slices_and_slice_areas_by_hand():
    from medlvr.corpus.masks import bounding_slices
    from medlvr.corpus.volumes import slice_areas

    vol = np.zeros((4, 5, 6), np.uint8)
    assert bounding_slices(vol) is None
    vol[1, 2, 3] = 7
    vol[2, 4, 1] = 1
    assert bounding_slices(vol) == (slice(1, 3), slice(2, 5), slice(1, 4))
    lab = np.array([[[0, 1], [1, 2]], [[2, 2], [0, 0]], [[0, 0], [0, 0]]])
    # slice 0: one background, two of instance 1, one of 2; slice 1: two of 2; slice 2: all background
    assert slice_areas(lab, 2).tolist() == [[1, 2, 4], [2, 0, 0], [1, 2, 0]]


def test_volume_rois_are_the_same_as_labelling_every_full_slice():
    """volume_images crops to the label map's bounding box: its boxes, instances and areas must equal a plain
    per-slice reference on the full slice (lesions away from the origin, at the volume's edge, several per slice)."""
    rng = np.random.default_rng(3)
    lab = np.zeros((30, 64, 80), np.uint8)
    lab[4:20, 10:50, 30:79] = 1  # organ touching the right edge
    lab[6:12, 20:28, 40:48] = 2
    lab[9:15, 35:45, 60:70] = 2  # second lesion, overlaps the first in z
    lab[9:11, 0:3, 0:3] = 2  # a speck at the corner (3-D specks below min_voxels are dropped; this one is 18)
    img = rng.normal(40, 10, lab.shape).astype(np.float32)
    rules = [LabelRule("organ", (1, 2), instances=False), LabelRule("lesion", (2,), parent="organ")]
    cfg = SliceConfig(max_slices_per_volume=30, extra_slices_per_instance=10, min_z_gap=1, negatives_per_volume=0)
    ims = volume_images({"": img}, lab, rules, source_path="v.nii", intensity="ct_hu", cfg=cfg, min_area=4)
    assert len(ims) > 5
    inst3d, _ = instances_3d(lab == 2, cfg.min_voxels)
    for im in ims:
        z = im.slice_index
        organ = _comps(np.isin(lab[z], (1, 2)), 4)  # instances=False: ONE box, the union of its pieces
        want = [("organ", (min(b[0] for b, _ in organ), min(b[1] for b, _ in organ), max(b[2] for b, _ in organ),
                           max(b[3] for b, _ in organ)), 0, float(sum(a for _, a in organ)))] if organ else []
        for i in np.unique(inst3d[z])[1:]:
            want += [("lesion", b, int(i), float(a)) for b, a in _comps(inst3d[z] == i, 4)]
        got = [(r.label, r.box, r.instance, r.area_px) for r in im.rois]
        assert sorted(got) == sorted(want), z


def _comps(mask, min_area):
    from medlvr.corpus.masks import components

    return components(mask, min_area)


def test_volume_speck_threshold_follows_the_full_slice_not_the_crop():
    lab = np.zeros((5, 400, 400), np.uint8)
    lab[1:4, 200:205, 200:205] = 1  # 25 px per slice: a speck on a 400x400 slice (threshold 32), not on a crop
    lab[1:4, 100:110, 100:110] = 1  # 100 px: kept
    assert min_speck_px((400, 400)) == 32
    ims = volume_images({"": np.zeros(lab.shape, np.float32)}, lab, [LabelRule("lesion", (1,))], source_path="v",
                        intensity="ct_hu", cfg=SliceConfig(negatives_per_volume=0))
    assert ims and all([r.box for r in im.rois] == [(100.0, 100.0, 110.0, 110.0)] for im in ims)


def test_rule_mask_equals_isin_for_every_path():
    from medlvr.corpus.volumes import rule_mask

    rng = np.random.default_rng(0)
    for dtype, lo in ((np.uint8, 0), (np.int16, -3)):
        lab = rng.integers(lo, 12, (4, 9, 9)).astype(dtype)
        for values in ((2,), (1, 3, 11), (0, 1, 2, 3, 5, 7, 9), (-3, 4, 5, 6, 7, 8)):
            assert np.array_equal(rule_mask(lab, values), np.isin(lab, values)), (dtype, values)
