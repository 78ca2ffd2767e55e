"""Canvas mapping, saliency normalisation, top-K selection and mosaic packing (pure arrays)."""

from __future__ import annotations

import numpy as np
import pytest
from cv_reader.canvas import CanvasGeometry
from cv_reader.mosaic import pack_mosaics
from cv_reader.saliency import FUSE_MODES, fuse, fused_energy, mv_energy, residual_energy, upsample_cells
from cv_reader.selection import global_topk, sample_frame_ids_uniform


def test_sample_frame_ids_uniform():
    assert sample_frame_ids_uniform(100, 5) == [0, 24, 49, 74, 99]
    assert sample_frame_ids_uniform(100, 5, start_offset=20) == [20, 39, 59, 79, 99]
    assert sample_frame_ids_uniform(3, 6) == [0, 0, 0, 1, 1, 2]  # fewer frames than T: repeats
    assert sample_frame_ids_uniform(10, 3, start_offset=50) == [0, 4, 9]  # bad offset -> 0
    assert sample_frame_ids_uniform(0, 4) == []


def test_canvas_geometry_matches_upstream_square_mapping():
    g = CanvasGeometry(144, 192, 576, 16)
    info = g.pad_info()
    assert (info["Hn"], info["Wn"], info["pad_top"], info["pad_left"]) == (432, 576, 72, 0)
    vm = g.valid_mask
    assert vm.shape == (36, 36)
    # content rows are 72..504: patch row 4 (64..80) and row 31 (496..512) straddle the border
    assert not vm[:5].any() and vm[5:31].all() and not vm[31:].any()
    vr = g.valid_ranges()
    assert (vr["valid_h_start"], vr["valid_h_end"], vr["S_valid"]) == (5, 31, 26 * 36)
    with pytest.raises(ValueError):
        CanvasGeometry(10, 10, 100, 16)


def test_patch_scores_integrate_energy():
    g = CanvasGeometry(36, 36, 576, 16)  # one source pixel == one patch
    e = np.random.default_rng(0).random((36, 36)).astype(np.float32)
    assert np.allclose(g.patch_scores(e), e * 256, rtol=1e-5)
    g2 = CanvasGeometry(128, 192, 192, 16)  # scale 1, pad 32: scores are plain 16x16 sums
    e2 = np.random.default_rng(1).random((128, 192)).astype(np.float32)
    sc = g2.patch_scores(e2)
    assert np.allclose(sc[2:10], e2.reshape(8, 16, 12, 16).sum((1, 3)), rtol=1e-4)
    assert (sc[:2] == 0).all() and (sc[10:] == 0).all()  # pure padding rows
    # a half-resolution map of the same frame gives the same integral
    half = e2.reshape(64, 2, 96, 2).mean((1, 3))
    assert np.allclose(g2.patch_scores(half).sum(), sc.sum(), rtol=1e-4)


def _overlap(bounds: np.ndarray, n: int) -> np.ndarray:
    """[intervals, n] length of each interval's overlap with each unit sample [k, k + 1)."""
    k = np.arange(n)
    return np.clip(np.minimum(bounds[1:, None], k + 1) - np.maximum(bounds[:-1, None], k), 0, None)


@pytest.mark.parametrize(
    "h,w,size,patch", [(37, 53, 576, 16), (144, 176, 96, 16), (5, 7, 64, 16), (61, 20, 112, 16)]
)
def test_patch_scores_equal_area_integral_of_resized_map(h, w, size, patch):
    """Non-integer scales, maps at a different resolution than the frame, batches, rotated views."""
    geo = CanvasGeometry(h, w, size, patch)
    rng = np.random.default_rng(h * w)
    for eh, ew in ((h, w), (h // 2 + 1, w // 3 + 1)):
        e = rng.random((3, eh, ew)).astype(np.float32)
        hn, wn = geo.content_hw
        edges = np.arange(geo.grid + 1) * patch
        ry = np.clip((edges - geo.pad_top) * eh / hn, 0, eh)
        rx = np.clip((edges - geo.pad_left) * ew / wn, 0, ew)
        ref = np.einsum("iy,byx,jx->bij", _overlap(ry, eh), e.astype(np.float64), _overlap(rx, ew))
        ref *= (hn / eh) * (wn / ew)
        np.testing.assert_allclose(geo.patch_scores(e), ref, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(geo.patch_scores(e[1]), ref[1], rtol=1e-5, atol=1e-5)
    rot = np.rot90(e, 1, axes=(1, 2))  # a non-contiguous view, as Stage 1 passes for rotated videos
    g_rot = CanvasGeometry(w, h, size, patch)
    np.testing.assert_allclose(
        g_rot.patch_scores(rot), g_rot.patch_scores(np.ascontiguousarray(rot)), rtol=0, atol=0
    )


def _residual_energy_reference(r: np.ndarray, pct: float, use_grad: bool) -> np.ndarray:
    """The definition written out with numpy: value / max(P_pct, floor), clipped to [0, 1]."""
    ri = r.astype(np.int32)
    if use_grad:
        v = 0.5 * (
            np.abs(np.roll(ri, -1, 1) - np.roll(ri, 1, 1)) + np.abs(np.roll(ri, -1, 0) - np.roll(ri, 1, 0))
        )
    else:
        v = np.abs(ri).astype(np.float64)
    return np.minimum(v / max(np.percentile(v, pct), 1.0), 1.0)


@pytest.mark.parametrize("use_grad", [False, True])
@pytest.mark.parametrize("pct", [95.0, 50.0, 99.9])
def test_residual_energy_matches_percentile_definition(use_grad, pct):
    rng = np.random.default_rng(int(pct))
    r = rng.normal(0, 12, (2, 23, 31)).clip(-255, 255).astype(np.int16)
    r[1, :, :20] = 0  # mostly clean frame: the percentile falls between histogram bins
    out = residual_energy(r, pct, use_grad)
    for b in range(2):
        np.testing.assert_allclose(
            out[b], _residual_energy_reference(r[b], pct, use_grad), rtol=1e-6, atol=1e-6
        )
        np.testing.assert_array_equal(residual_energy(r[b], pct, use_grad), out[b])


@pytest.mark.parametrize("mode", FUSE_MODES)
def test_fused_energy_is_fusion_of_upsampled_mv_and_residual_energy(mode):
    rng = np.random.default_rng(7)
    res = rng.normal(0, 10, (3, 18, 22)).astype(np.int16)
    # 4 x 11 cells of 5 x 2 px (different factors per axis; the last cell row is partial)
    mv = rng.integers(-20, 20, (3, 4, 11, 2)).astype(np.int16)
    ref = rng.choice(np.array([-2, -1, 0, 1], np.int8), (3, 4, 11))
    kw = dict(fuse_mode=mode, w_mv=3.0, w_res=1.0, res_use_grad=mode == "sum", mv_compensate="mean")
    out = fused_energy(mv, ref, res, **kw)
    m = upsample_cells(mv_energy(mv, ref, compensate_mode="mean"), 18, 22)
    r = residual_energy(res, use_grad=mode == "sum")
    np.testing.assert_array_equal(out, fuse(m, r, mode, 3.0, 1.0))
    assert out.dtype == np.float32 and out.min() >= 0 and out.max() <= 1
    np.testing.assert_array_equal(fused_energy(mv[0], ref[0], res[0], **kw), out[0])


def test_energy_normalisation():
    r = np.zeros((10, 10), np.int16)
    r[0, :5] = 40
    r[1, :5] = -20
    e = residual_energy(r, 95)
    assert e.max() == 1.0 and e.min() == 0.0 and e.dtype == np.float32
    assert residual_energy(np.zeros((4, 4), np.int16)).max() == 0.0  # floor keeps a clean frame at 0
    g = residual_energy(r, 95, use_grad=True)
    assert g.shape == r.shape and 0 <= g.min() and g.max() <= 1
    mv = np.zeros((4, 4, 2), np.int16)
    ref = -np.ones((4, 4), np.int8)
    mv[..., 0] = 8
    mv[0, 0] = [40, 0]
    ref[3, 3] = 0  # intra cell: no MV energy
    m = mv_energy(mv, ref, compensate_mode="median")
    assert m[0, 0] == 1.0 and m[1, 1] == 0.0 and m[3, 3] == 0.0
    a, b = np.full((2, 2), 0.2, np.float32), np.full((2, 2), 0.8, np.float32)
    assert fuse(a, b, "weighted")[0, 0] == pytest.approx(0.5)
    assert fuse(a, b, "max")[0, 0] == pytest.approx(0.8)
    assert fuse(a, b, "sum")[0, 0] == pytest.approx(1.0)
    assert fuse(a, b, "geomean")[0, 0] == pytest.approx(0.4)
    assert fuse(a, b, "weighted", w_mv=3, w_res=1)[0, 0] == pytest.approx(0.35)
    with pytest.raises(ValueError):
        fuse(a, b, "nope")


def _vm():
    vm = np.zeros((4, 4), bool)
    vm[1:3] = True
    return vm


def test_topk_exclude_never_selects_padding():
    scores = np.random.default_rng(0).random((6, 4, 4)).astype(np.float32)
    scores[:, 0] = 100.0  # padding rows with (impossible) high energy
    top = global_topk(scores, _vm(), keep_frames_equiv=2, padding_policy="exclude")
    assert top.k == 2 * 8
    assert _vm()[top.thw[:, 1], top.thw[:, 2]].all()
    # ranked by descending score
    vals = scores[top.thw[:, 0], top.thw[:, 1], top.thw[:, 2]]
    assert (np.diff(vals) <= 0).all()


def test_topk_zero_uses_full_budget_and_padding_last():
    scores = np.zeros((2, 4, 4), np.float32)
    scores[:, 1:3] = 1.0
    top = global_topk(scores, _vm(), keep_frames_equiv=2, padding_policy="zero")
    assert top.k == 32  # T * S_total: everything, content first
    assert _vm()[top.thw[:16, 1], top.thw[:16, 2]].all()
    assert not _vm()[top.thw[16:, 1], top.thw[16:, 2]].any()


@pytest.mark.parametrize("k", [0, 1, 37, 500, 999, 1000, 1200])
def test_ranked_equals_full_stable_sort(k):
    from cv_reader.selection import _ranked

    rng = np.random.default_rng(k)
    scores = rng.integers(0, 6, (10, 10, 10)).astype(np.float64)  # many ties at every rank
    scores[rng.random(scores.shape) < 0.1] = -np.inf
    np.testing.assert_array_equal(_ranked(scores, k), np.argsort(-scores.reshape(-1), kind="stable")[:k])


def test_topk_ties_are_stable():
    scores = np.ones((3, 4, 4), np.float32)
    top = global_topk(scores, np.ones((4, 4), bool), keep_frames_equiv=1, padding_policy="zero")
    hh, ww = np.divmod(np.arange(16), 4)
    assert np.array_equal(top.thw, np.stack([np.zeros(16), hh, ww], 1))  # earliest frame, raster order


def test_topk_keep_first_full_frame_and_uniform_first():
    rng = np.random.default_rng(1)
    scores = rng.random((5, 4, 4)).astype(np.float32)
    top = global_topk(scores, _vm(), keep_frames_equiv=3, padding_policy="zero", keep_first_full_frame=True)
    assert top.k == 3 * 16
    hh, ww = np.divmod(np.arange(16), 4)
    assert np.array_equal(top.thw[:16], np.stack([np.zeros(16), hh, ww], 1))
    assert (top.thw[16:, 0] >= 1).all()
    ex = global_topk(scores, _vm(), keep_frames_equiv=3, padding_policy="exclude", keep_first_full_frame=True)
    assert ex.k == 16 + 2 * 8 and _vm()[ex.thw[16:, 1], ex.thw[16:, 2]].all()
    uf = global_topk(scores, _vm(), keep_frames_equiv=2, padding_policy="exclude", keep_uniform_first=True)
    assert uf.k == 16 and (uf.thw[:8, 0] == 0).all() and (uf.thw[8:, 0] >= 1).all()
    with pytest.raises(ValueError):
        global_topk(scores, _vm(), padding_policy="bogus")


def _canvases(t=3, size=64, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (t, size, size, 3)).astype(np.uint8)


def test_pack_mosaics_zero_layout():
    canv = _canvases()
    rows = [[0, 0, 0], [0, 3, 3]] + [[1, h, w] for h in range(4) for w in range(4)]
    rows += [[2, h, w] for h in range(4) for w in range(4)][:14]
    thw = np.array(rows, np.int32)[np.random.default_rng(5).permutation(len(rows))]  # ranked order
    mos, pos = pack_mosaics(canv, thw, 16, num_images=2, padding_policy="zero")
    assert mos.shape == (2, 64, 64, 3) and pos.shape == (32, 3)
    assert (np.diff(pos[:, 0] * 100 + pos[:, 1] * 10 + pos[:, 2]) > 0).all()  # sorted by (t, h, w)
    for j, (t, h, w) in enumerate(pos):
        m, s = divmod(j, 16)
        r, c = divmod(s, 4)
        assert np.array_equal(
            mos[m, r * 16 : (r + 1) * 16, c * 16 : (c + 1) * 16],
            canv[t, h * 16 : (h + 1) * 16, w * 16 : (w + 1) * 16],
        )
    with pytest.raises(ValueError):
        pack_mosaics(canv, thw[:-1], 16, num_images=2, padding_policy="zero")


def test_pack_mosaics_first_full_and_exclude_layout():
    canv = _canvases()
    full0 = [[0, h, w] for h in range(4) for w in range(4)]
    rest = [[1, h, w] for h in (1, 2) for w in range(4)]
    vr = {"valid_h_start": 1, "valid_h_end": 3, "valid_w_start": 0, "valid_w_end": 4}
    mos, pos = pack_mosaics(
        canv,
        np.array(full0 + rest, np.int32),
        16,
        num_images=2,
        padding_policy="exclude",
        valid_ranges=vr,
        first_full=True,
    )
    assert np.array_equal(mos[0], canv[0])
    assert np.array_equal(pos[:16], full0)
    assert np.array_equal(mos[1, 16:48], canv[1, 16:48])  # content rows at their offset
    assert (mos[1, :16] == 0).all() and (mos[1, 48:] == 0).all()  # other slots black
    with pytest.raises(ValueError, match="keep_first_full_frame"):
        pack_mosaics(
            canv,
            np.array(rest + rest, np.int32),
            16,
            num_images=2,
            padding_policy="exclude",
            valid_ranges=vr,
            first_full=True,
        )
