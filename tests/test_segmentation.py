"""Slides read lazily, tiled segmentation without seams, and the TIFF export, on real images."""

import numpy as np
import pytest
import tifffile
import torch

from napari_cinuseg import CiNuSegModel, drain
from napari_cinuseg.inference.segmentation import segment
from napari_cinuseg.inference.tiling import blend_window, tile_origins, tissue_fraction
from napari_cinuseg.io.export import export_masks, read_masks
from napari_cinuseg.io.slides import Slide
from napari_cinuseg.model.network import Architecture
from napari_cinuseg.runtime.events import SegmentFinished, SegmentStarted, TileProgress


@pytest.fixture(scope="module")
def svs(shared_data):
    return shared_data / "slides" / "CMU-1-Small-Region.svs"


@pytest.fixture(scope="module")
def patch(svs):
    with Slide(svs) as s:
        return s.read(1000, 800, 1512, 1312)


@pytest.fixture(scope="module")
def varied_model():
    """A random network with a strong random classifier: its class map varies from pixel to
    pixel, so any seam between tiles would show (a freshly initialised one predicts one class)."""
    torch.manual_seed(0)
    m = CiNuSegModel.new(["A", "B", "C"], Architecture("resnet18", "unet", (32, 16, 16, 8)))
    with torch.no_grad():
        m.network.classifier.weight.normal_(0, 1)
        m.network.classifier.bias.zero_()
    return m


def test_svs_is_read_lazily_by_region(svs):
    with Slide(svs) as s:
        assert s.shape == (2967, 2220)
        region = s.read(100, 200, 164, 296)
        assert region.shape == (64, 96, 3) and region.dtype == np.uint8
        edge = s.read(2950, 2200, 2990, 2240)  # past the corner: padded with white
        assert (edge[17:, :] == 255).all() and (edge[:, 20:] == 255).all()
    with tifffile.TiffFile(svs) as tif:
        np.testing.assert_array_equal(region, tif.series[0].asarray()[100:164, 200:296])


def test_tile_grid_and_window():
    assert tile_origins(1000, 512, 64) == [0, 448, 488]
    assert tile_origins(300, 512, 64) == [0]
    w = blend_window(8, 3)
    assert w[4, 4] == 1 and w[0, 0] < 1e-5 and w.shape == (8, 8)
    with pytest.raises(ValueError):
        tile_origins(100, 64, 64)


def test_tiled_result_matches_whole_image(varied_model, patch):
    whole = drain(segment(varied_model, patch, tile=512, overlap=0, min_tissue=0))
    assert len(np.unique(whole)) >= 3
    tiled = drain(segment(varied_model, patch, tile=256, overlap=128, min_tissue=0))
    naive = np.zeros_like(whole)  # four separate tiles, no overlap, no blending
    for y in (0, 256):
        for x in (0, 256):
            naive[y : y + 256, x : x + 256] = drain(
                segment(varied_model, patch[y : y + 256, x : x + 256].copy(), tile=256, overlap=0, min_tissue=0)
            )
    seam = np.zeros(whole.shape, bool)
    seam[240:272, :] = seam[:, 240:272] = True
    assert (tiled == whole).mean() > 0.998
    assert (tiled == whole)[seam].mean() > (naive == whole)[seam].mean()


def test_background_tiles_are_skipped(varied_model):
    img = np.full((512, 768, 3), 245, np.uint8)  # empty glass
    img[100:200, 600:700] = (150, 60, 140)  # some stained tissue in the last column of tiles
    assert tissue_fraction(img[:256, :256]) == 0.0
    events = []
    result = drain(segment(varied_model, img, tile=256, overlap=0), events.append)
    finished = events[-1]
    assert isinstance(finished, SegmentFinished) and finished.tiles == 6 and finished.skipped == 5
    assert (result[:, :512] == 0).all()


def test_small_tissue_image_is_not_skipped(varied_model, patch):
    small = patch[:48, :48].copy()  # all tissue, far smaller than the tile
    result = drain(segment(varied_model, small, tile=512, overlap=0))
    assert result.shape == (48, 48) and (result > 0).any()


def test_segmentation_to_disk_and_cancel(varied_model, svs, tmp_path):
    out = tmp_path / "slide.zarr"
    cancel = {"now": False}

    def on_event(ev):
        if isinstance(ev, TileProgress) and ev.done >= 2:
            cancel["now"] = True

    res = drain(
        segment(varied_model, svs, tile=256, overlap=32, batch_size=2, out=out, cancel=lambda: cancel["now"]), on_event
    )
    assert res is None and list(tmp_path.iterdir()) == []  # nothing half-written
    with Slide(svs) as s:
        region = s.read(0, 0, 700, 600)
    res = drain(segment(varied_model, region, tile=256, overlap=32, out=out))
    import zarr

    assert res == out and zarr.open_array(str(out), mode="r").shape == (700, 600)


def test_strips_give_the_same_class_map(varied_model, patch, tmp_path):
    """Vertical strips bound the memory by the strip width; the seam tiles are recomputed so the
    class map is exactly the one segmented in a single strip, in memory and on disk."""
    img = patch[:192].copy()  # 192 x 512 of real tissue: 4 rows of 64 px tiles, 11 columns
    ys, xs = tile_origins(192, 64, 16), tile_origins(512, 64, 16)

    def run(strip, **kw):
        events = []
        res = drain(segment(varied_model, img, tile=64, overlap=16, strip=strip, **kw), events.append)
        started = next(e for e in events if isinstance(e, SegmentStarted))
        progress = [e for e in events if isinstance(e, TileProgress)]
        assert progress[-1].done == progress[-1].total == started.tiles
        return res, started.tiles

    whole, n_whole = run(8192)
    assert n_whole == len(ys) * len(xs)  # one strip: today's tiles, none recomputed
    assert len(np.unique(whole)) >= 3
    strips, n_strips = run(160)  # 4 strips of at most 160 columns
    assert n_strips > n_whole
    assert np.array_equal(strips, whole)
    import zarr

    out = drain(segment(varied_model, img, tile=64, overlap=16, strip=160, out=tmp_path / "strips.zarr"))
    assert np.array_equal(zarr.open_array(str(out), mode="r")[:], whole)


@pytest.mark.parametrize("strip", [32, 0, -512, 100.0, True])
def test_bad_strip_is_refused(varied_model, patch, strip):
    with pytest.raises(ValueError, match="strip must be"):
        drain(segment(varied_model, patch, tile=64, overlap=16, strip=strip))


def test_export_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    class_map = rng.integers(0, 4, (300, 520)).astype(np.uint8)
    path = export_masks(
        class_map,
        tmp_path / "masks.tif",
        ["Epithelial", "Spindle-shaped", "Other"],
        ["#ff0000", "#00ff00", "#0000ff"],
        model_id="abc",
    )
    back, masks, meta = read_masks(path)
    np.testing.assert_array_equal(back, class_map)
    assert list(masks) == ["Epithelial", "Spindle-shaped", "Other"]
    np.testing.assert_array_equal(masks["Other"], class_map == 3)
    assert meta["model_id"] == "abc" and meta["classes"]["2"] == "Spindle-shaped"
    with tifffile.TiffFile(path) as tif:
        assert tif.pages[0].is_tiled and tif.pages[0].compression == 8  # deflate
    with pytest.raises(FileExistsError):
        export_masks(class_map, path, ["a", "b", "c"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["masks.tif"]


def test_compile_option_traces_the_network_and_gives_the_same_map(varied_model, patch, monkeypatch):
    """``compile=True`` runs the network through torch.compile. TorchInductor's code generation
    takes a minute on a CPU, so the test compiles with dynamo's "eager" backend: the network is
    really traced into graphs (no graph break), and the class map must not change."""
    from torch._dynamo.testing import CompileCounter

    counter = CompileCounter()
    real = torch.compile
    monkeypatch.setattr(torch, "compile", lambda net, **kw: real(net, backend=counter, **kw))
    torch._dynamo.reset()
    img = patch[:256, :256]
    eager = drain(segment(varied_model, img, tile=128, overlap=32, batch_size=4, min_tissue=0))
    compiled = drain(segment(varied_model, img, tile=128, overlap=32, batch_size=4, min_tissue=0, compile=True))
    np.testing.assert_array_equal(compiled, eager)
    assert counter.frame_count == 1 and counter.op_count > 50  # the whole network, one graph
    torch._dynamo.reset()


def test_pixel_size_of_a_slide_is_read_from_the_file(svs):
    with Slide(svs) as s:
        assert s.pixel_size == pytest.approx(0.499)


def test_an_image_at_half_the_resolution_gives_the_same_nuclei(consep):
    """An image downsampled 2× and declared at twice the pixel size is resampled to the
    model's, and gives the nuclei of the original: IoU ≥ 0.8 once upsampled, pooled over real 512²
    mosaics of every third CoNSeP source image (measured with the bundled model: 0.86; per mosaic
    0.72-0.91, bounded by how much the model's own prediction changes when the detail is lost).
    Without resampling it is far lower (0.33)."""
    from skimage.transform import resize

    from napari_cinuseg.inference.segmentation import resampling_factor
    from napari_cinuseg.model.file import BUNDLED_MODEL, load_model

    model = load_model(BUNDLED_MODEL)
    model.pixel_size = model.pixel_size or 0.25
    px = model.pixel_size
    inter = union = inter_raw = union_raw = 0
    for start in range(0, len(consep.items), 48):  # 16 patches a source: every third source
        image = np.concatenate(
            [np.concatenate([it.image for it in consep.items[i : i + 2]], 1) for i in (start, start + 2)], 0
        )
        full = drain(segment(model, image, device="cpu", image_pixel_size=px, min_tissue=0)) > 0
        small = (
            (resize(image, (image.shape[0] // 2, image.shape[1] // 2, 3), anti_aliasing=True) * 255)
            .round()
            .astype(np.uint8)
        )
        half = drain(segment(model, small, device="cpu", image_pixel_size=2 * px, min_tissue=0))
        assert half.shape == small.shape[:2]  # the class map has the image's own size
        up = np.kron(half > 0, np.ones((2, 2), bool))
        raw = np.kron(
            drain(segment(model, small, device="cpu", image_pixel_size=px, min_tissue=0)) > 0, np.ones((2, 2), bool)
        )
        inter, union = inter + (up & full).sum(), union + (up | full).sum()
        inter_raw, union_raw = inter_raw + (raw & full).sum(), union_raw + (raw | full).sum()
    assert union > 0.03 * 9 * 512 * 512  # the model does find nuclei here
    assert inter / union >= 0.8, inter / union
    assert inter_raw / union_raw < inter / union  # resampling is what makes the difference
    assert resampling_factor(px, 2 * px) == 2.0
    # unknown sizes are never resampled, nor sizes within 5 %
    assert (
        resampling_factor(None, 0.5) == 1.0
        and resampling_factor(0.25, None) == 1.0
        and resampling_factor(0.25, 0.26) == 1.0
    )
