"""The nucleus separation: a head beside the classifier that learns each nucleus's normalised
distance to its border, the instances split on it (whole and blockwise, and from the engine's
tiles), its model file and the fallback of models without it, a step that keeps it, and the panel and
writer splitting by it as `cinuseg segment` does."""

from pathlib import Path

import numpy as np
import pytest
import torch
from skimage.draw import disk

from napari_cinuseg import CiNuSegModel, drain, load_model, read_record, save_model, train_base, train_step
from napari_cinuseg.analysis.objects import image_scores
from napari_cinuseg.cli import main
from napari_cinuseg.datasets.labelled import TrainingPair, read_consep_instances
from napari_cinuseg.inference.instances import instance_method, nuclei_of, split_nuclei
from napari_cinuseg.inference.segmentation import segment
from napari_cinuseg.losses.separation import UNKNOWN, distance_target, separation_distillation, separation_loss
from napari_cinuseg.model.file import BUNDLED_MODEL
from napari_cinuseg.model.network import Architecture, NucleiSegNet
from napari_cinuseg.training.crops import CropDataset

ARCH = Architecture("resnet18", "unet", (32, 16, 16, 8), separation="distance")


def _pressed_discs() -> np.ndarray:
    """A nucleus of radius 10 px and a smaller one (6 px) pressed into it: their union hardly
    pinches, so the class map's distance transform has one peak."""
    truth = np.zeros((60, 80), np.int32)
    rr, cc = disk((30, 30), 10, shape=truth.shape)
    truth[rr, cc] = 1
    rr, cc = disk((30, 42), 6, shape=truth.shape)
    free = truth[rr, cc] == 0
    truth[rr[free], cc[free]] = 2
    return truth


def test_the_head_gives_one_map_beside_unchanged_logits():
    torch.manual_seed(0)
    with_head = NucleiSegNet(ARCH).eval()
    without = NucleiSegNet(Architecture("resnet18", "unet", (32, 16, 16, 8), 3)).eval()
    x = torch.randn(2, 3, 64, 96)
    out = with_head(x)
    assert out.logits.shape == (2, 1, 64, 96) and out.separation.shape == (2, 1, 64, 96)
    assert without(x).separation is None and not without.has_separation
    # the head does not touch the class scores: the same weights without it give the same logits
    without_head = NucleiSegNet(Architecture("resnet18", "unet", (32, 16, 16, 8)))
    state = {k: v for k, v in with_head.state_dict().items() if not k.startswith("separation.")}
    without_head.load_state_dict(state)
    assert torch.allclose(without_head.eval()(x).logits, out.logits)
    with pytest.raises(ValueError, match="unknown separation"):
        Architecture(separation="stars")


def test_distance_target_peaks_at_one_in_every_nucleus_and_dips_where_two_touch():
    truth = _pressed_discs()
    d = distance_target(truth)
    assert d[truth == 0].max() == 0
    for i in (1, 2):
        assert d[truth == i].max() == pytest.approx(1.0)
    assert d[30, 30] == pytest.approx(1.0)  # the large nucleus peaks at its centre
    border = (truth == 1) & np.isin(np.roll(truth, -1, axis=1), [2])
    assert d[border].max() < 0.2  # where they meet
    with pytest.raises(ValueError, match="integer instance map"):
        distance_target(truth.astype(float))


def test_loss_is_zero_on_the_target_and_ignores_unknown_pixels():
    target = torch.from_numpy(distance_target(_pressed_discs()))[None]
    exact = torch.logit(target.clamp(1e-4, 1 - 1e-4))[:, None]
    assert separation_loss(exact, target).item() < 1e-3  # logits clamped at ±9.2
    wrong = torch.zeros_like(exact)  # σ = 0.5 everywhere
    assert separation_loss(wrong, target).item() > 0.1
    unknown = torch.full_like(target, UNKNOWN)
    assert separation_loss(wrong, unknown).item() == 0  # no instances, no loss
    half = target.clone()
    half[:, :, 40:] = UNKNOWN
    only_left = separation_loss(wrong, half).item()
    d = target[:, :, :40].double()
    kl = d * torch.log(d.clamp_min(1e-12) / 0.5) + (1 - d) * torch.log((1 - d).clamp_min(1e-12) / 0.5)
    assert only_left == pytest.approx(kl.mean().item(), rel=1e-4)
    assert separation_distillation(exact, exact).item() == 0
    with pytest.raises(ValueError, match="must agree"):
        separation_loss(wrong[..., :10], target)


def test_the_learned_distance_splits_nuclei_the_watershed_keeps_as_one():
    truth = _pressed_discs()
    class_map = (truth > 0).astype(np.uint8)
    watershed = split_nuclei(class_map, min_distance_px=6)[0]
    assert watershed.max() == 1  # today's instances: one object
    learned = split_nuclei(class_map, method="distance", separation=distance_target(truth))[0]
    assert learned.max() == 2 and image_scores(truth, learned)["f1"] == 1.0
    # a uint8 map (as segmentation writes it) gives the same
    as_uint8 = (distance_target(truth) * 255 + 0.5).astype(np.uint8)
    assert np.array_equal(split_nuclei(class_map, method="distance", separation=as_uint8)[0], learned)
    with pytest.raises(ValueError, match="separation map"):
        split_nuclei(class_map, method="distance")


def test_on_consep_the_true_distance_splits_better_than_the_class_maps_watershed(shared_data):
    """CoNSeP's own class maps, split by the watershed and by the distance of its own instances
    (what a perfect separation head would give): the distance finds the nuclei the watershed merges."""
    from skimage import io as skio

    stems = ["train_1_000", "train_5_003", "train_9_007", "train_13_010", "train_20_005"]
    root = shared_data / "consep" / "train"
    instances = read_consep_instances(shared_data / "consep", stems)
    f1 = {"watershed": [], "distance": []}
    for s in stems:
        labels = skio.imread(root / "labels" / f"{s}.png")
        inst = instances[s]
        f1["watershed"].append(image_scores(inst, split_nuclei(labels, min_distance_px=6)[0])["f1"])
        pred = split_nuclei(labels, method="distance", separation=distance_target(inst))[0]
        f1["distance"].append(image_scores(inst, pred)["f1"])
    assert np.mean(f1["distance"]) > np.mean(f1["watershed"]) + 0.03, f1  # 0.95 against 0.90


def test_blockwise_distance_instances_match_the_whole_map():
    rng = np.random.default_rng(0)
    truth = np.zeros((300, 300), np.int32)
    for i in range(1, 60):
        rr, cc = disk(tuple(rng.integers(10, 290, 2)), int(rng.integers(5, 10)), shape=truth.shape)
        truth[rr, cc] = i
    class_map = (truth > 0).astype(np.uint8)
    sep = (distance_target(truth) * 255 + 0.5).astype(np.uint8)
    whole = nuclei_of(class_map, separation=sep, method="distance", pixel_size_um=0.25)
    blocks = nuclei_of(
        class_map, separation=sep, method="distance", pixel_size_um=0.25, blockwise=True, block=100, margin=32
    )
    assert blocks.count == whole.count
    assert image_scores(whole.labels, blocks.labels)["f1"] == 1.0


def test_crops_carry_the_distance_of_their_instances_or_unknown(few_pairs):
    pair = few_pairs[0][0]
    inst = np.zeros(pair.target.shape, np.int32)
    inst[:, :] = np.arange(inst.shape[1])[None] // 16 + 1  # stripes: every pixel a nucleus
    known = CropDataset([pair._replace(instances=inst)], 64, seed=0, length=2)
    unknown = CropDataset([pair], 64, seed=0, length=2)
    _, y, sep, _ = known[0]
    _, y2, sep2, _ = unknown[0]
    assert torch.equal(y, y2)  # the same crop
    assert sep.shape == (64, 64) and float(sep.max()) == pytest.approx(1.0) and float(sep.min()) >= 0
    assert bool((sep2 == UNKNOWN).all())


def test_model_file_of_a_head_is_format_3_and_old_files_fall_back(tmp_path, capsys):
    model = CiNuSegModel.new(["Epithelial"], ARCH)
    path = save_model(model, tmp_path / "sep.cinuseg.pt", int8=True)
    payload = torch.load(path, weights_only=True)
    assert payload["format_version"] == 3
    loaded = load_model(path)
    assert loaded.network.has_separation and instance_method(loaded.network.has_separation) == "distance"
    assert read_record(path)["architecture"]["separation"] == "distance"
    assert main(["info", str(path)]) == 0
    assert "learned distance map" in capsys.readouterr().out
    # the bundled model carries the head: its learned distance splits its nuclei
    bundled = load_model(BUNDLED_MODEL)
    assert torch.load(BUNDLED_MODEL, weights_only=True)["format_version"] == 3
    assert bundled.network.has_separation and instance_method(bundled.network.has_separation) == "distance"
    class_map, distance = bundled.predict_maps(np.full((64, 64, 3), 200, np.uint8))
    assert class_map.shape == (64, 64) and distance.shape == (64, 64)
    assert main(["info", str(BUNDLED_MODEL)]) == 0
    assert "learned distance map" in capsys.readouterr().out
    # a format-2 file (8-bit kernels, no head) still loads, and falls back to today's watershed
    flat = save_model(
        CiNuSegModel.new(["Epithelial"], Architecture("resnet18", "unet", (32, 16, 16, 8))),
        tmp_path / "int8.cinuseg.pt",
        int8=True,
    )
    assert torch.load(flat, weights_only=True)["format_version"] == 2
    loaded = load_model(flat)
    assert not loaded.network.has_separation and instance_method(loaded.network.has_separation) == "watershed"
    assert loaded.predict_maps(np.full((64, 64, 3), 200, np.uint8))[1] is None
    assert main(["info", str(flat)]) == 0
    assert "no separation head" in capsys.readouterr().out
    # a format-1 file (no head, fp32) still loads
    plain = CiNuSegModel.new(["Epithelial"], Architecture("resnet18", "unet", (32, 16, 16, 8)))
    old = save_model(plain, tmp_path / "old.cinuseg.pt")
    assert torch.load(old, weights_only=True)["format_version"] == 1
    assert not load_model(old).network.has_separation


def test_segment_writes_the_blended_distance_beside_the_class_map(few_pairs):
    torch.manual_seed(0)
    model = CiNuSegModel.new(["Epithelial"], ARCH)
    image = few_pairs[0][0].image
    class_map, distance = model.predict_maps(image)
    sep = np.zeros(image.shape[:2], np.uint8)
    result = drain(segment(model, image, tile=256, overlap=0, device="cpu", min_tissue=0, separation_out=sep))
    assert np.array_equal(result, class_map)
    assert np.abs(sep / 255.0 - distance).max() <= 1 / 255 + 1e-3
    plain = CiNuSegModel.new(["Epithelial"], Architecture("resnet18", "unet", (32, 16, 16, 8)))
    with pytest.raises(ValueError, match="no separation head"):
        drain(segment(plain, image, tile=256, device="cpu", separation_out=sep))


def _distance_drift(prior, child, images) -> float:
    drift = []
    for img in images:
        drift.append(np.abs(prior.predict_maps(img)[1] - child.predict_maps(img)[1]).mean())
    return float(np.mean(drift))


def test_a_step_keeps_the_priors_separation_by_distillation(shared_data, few_pairs, tiny):
    """A base model learns the separation on CoNSeP's instances; a step (fine-tuning, a method that
    never looks at the prior's classes, at a high learning rate) moves it less with the
    separation's distillation than without it, and keeps the head."""
    base_pairs = few_pairs[0]
    inst = read_consep_instances(shared_data / "consep", [p.name for p in base_pairs])
    base_pairs = [p._replace(instances=inst[p.name]) for p in base_pairs]
    settings = tiny.replace(separation="distance", iterations=6)
    prior = drain(train_base(base_pairs, ["Epithelial", "Spindle-shaped"], settings))
    assert prior.network.has_separation
    new = few_pairs[1]
    images = [p.image for p in new[:2]]
    step = tiny.replace(iterations=6, lr_step=0.05)
    kept = drain(train_step(prior, new, ["Other"], step, method="finetune"))
    free = drain(train_step(prior, new, ["Other"], step.replace(separation_weight=0.0), method="finetune"))
    assert kept.network.has_separation and kept.arch.separation == "distance"
    assert _distance_drift(prior, kept, images) < _distance_drift(prior, free, images)


def test_a_pair_with_an_instance_map_of_another_size_is_refused(few_pairs, tiny):
    pair = few_pairs[0][0]
    bad = TrainingPair(pair.image, pair.target, pair.name, np.zeros((10, 10), np.int32))
    with pytest.raises(ValueError, match="instance map"):
        drain(train_base([bad], ["Epithelial", "Spindle-shaped"], tiny.replace(separation="distance")))


def test_cinuseg_segment_splits_by_the_models_learned_distance(few_pairs, tmp_path, capsys):
    from skimage import io as skio

    torch.manual_seed(0)
    model = CiNuSegModel.new(["Epithelial"], ARCH)
    model.pixel_size = 0.25
    path = save_model(model, tmp_path / "sep.cinuseg.pt")
    plain = save_model(
        CiNuSegModel.new(["Epithelial"], Architecture("resnet18", "unet", (32, 16, 16, 8))),
        tmp_path / "plain.cinuseg.pt",
    )
    image = tmp_path / "patch.png"
    skio.imsave(image, few_pairs[0][0].image, check_contrast=False)
    common = ["--device", "cpu", "--tile", "128", "--overlap", "32", "--pixel-size", "0.25"]
    assert main(["segment", str(image), "--model", str(path), "--out", str(tmp_path / "a"), *common]) == 0
    assert (tmp_path / "a" / "patch.nuclei.csv").is_file()
    assert not [p for p in (tmp_path / "a").iterdir() if p.name.startswith(".")]  # no scratch left
    capsys.readouterr()
    code = main(
        ["segment", str(image), "--model", str(plain), "--out", str(tmp_path / "b"), "--instances", "distance", *common]
    )
    assert code != 0 and "separation head" in capsys.readouterr().err


def _outlines(path) -> list:
    """A GeoJSON's features without their ids (a new random UUID each time it is written)."""
    import json

    return [{k: v for k, v in f.items() if k != "id"} for f in json.loads(Path(path).read_text())["features"]]


def _headless_model(path):
    """The bundled model (its real class maps) without its separation head, saved to ``path``: a
    model of before the head, whose nuclei the class map's watershed splits."""
    model = load_model(BUNDLED_MODEL)
    model.network.separation = None
    model.network.arch.separation = "none"
    return save_model(model, path)


@pytest.mark.parametrize("head", [True, False])
def test_the_panels_and_writers_nuclei_are_cinuseg_segments_own(shared_data, tmp_path, head):
    """The panel's session (Segment image), its Export and napari's writer give the nuclei, CSV
    and GeoJSON that ``cinuseg segment --instances auto`` gives for the same image: by the
    learned distance for a model with a separation head, and exactly the class map's watershed
    (as before the head) for one without."""
    from skimage import io as skio

    from napari_cinuseg.io.images import read_rgb
    from napari_cinuseg.plugin.layer_metadata import NUCLEI_KEY, SEPARATION_KEY, result_metadata
    from napari_cinuseg.plugin.writer import write_masks
    from napari_cinuseg.session.export import export_nuclei
    from napari_cinuseg.session.nuclei import segment_nuclei_and_measure

    path = BUNDLED_MODEL if head else _headless_model(tmp_path / "plain.cinuseg.pt")
    model = load_model(path)
    image = read_rgb(shared_data / "consep" / "train" / "images" / "train_3_004.jpg")
    png = tmp_path / "patch.png"
    skio.imsave(png, image, check_contrast=False)
    common = ["--device", "cpu", "--tile", "256", "--overlap", "32", "--pixel-size", "0.25", "--geojson"]
    assert main(["segment", str(png), "--model", str(path), "--out", str(tmp_path / "cli"), *common]) == 0
    cli_csv, cli_geojson = (tmp_path / "cli" / "patch.nuclei.csv").read_text(), (tmp_path / "cli" / "patch.geojson")

    done = drain(segment_nuclei_and_measure(model, image, tile=256, overlap=32, image_pixel_size=0.25, device="cpu"))
    watershed = nuclei_of(done.class_map, pixel_size_um=0.25)
    if head:
        assert done.nuclei.method == "distance" and done.separation.shape == image.shape[:2]
        assert done.nuclei.count != watershed.count  # the test tells the two apart
    else:
        assert done.nuclei.method == "watershed" and done.separation is None
        assert np.array_equal(done.nuclei.labels, watershed.labels)
        assert np.array_equal(done.nuclei.classes, watershed.classes)
    (tmp_path / "panel").mkdir()
    names, colours = model.class_names, [c.colour for c in model.classes]
    _, csv_path, gj = drain(
        export_nuclei(
            done.class_map,
            done.nuclei,
            tmp_path / "panel" / "patch.masks.tif",
            names,
            colours,
            model.id,
            pixel_size=0.25,
        )
    )
    assert csv_path.read_text() == cli_csv
    assert _outlines(gj) == _outlines(cli_geojson)

    # napari's writer: on the panel's classes layer (its nuclei), and on a layer without them (the
    # class map of pixels, or one edited by hand): split again, by the learned distance it carries
    meta = {"cinuseg": result_metadata(names, colours, model.id, 0.25)}
    if head:
        meta[SEPARATION_KEY] = done.separation
    (tmp_path / "writer").mkdir()
    _, table, _ = write_masks(
        tmp_path / "writer" / "a.tif", done.object_map, {"metadata": {**meta, NUCLEI_KEY: done.nuclei}}
    )
    assert Path(table).read_text() == cli_csv
    _, table, outlines = write_masks(tmp_path / "writer" / "b.tif", done.class_map, {"metadata": meta})
    assert Path(table).read_text() == cli_csv and _outlines(outlines) == _outlines(cli_geojson)
    if head:  # a layer cropped since it was segmented: its map no longer fits, the watershed splits it
        crop = np.ascontiguousarray(done.class_map[:200, :200])
        with pytest.warns(UserWarning, match="split by the watershed instead"):
            _, table, _ = write_masks(tmp_path / "writer" / "c.tif", crop, {"metadata": meta})
        assert Path(table).read_text().count("\n") > 1


def test_a_slides_learned_distance_goes_to_disk_beside_its_class_map(shared_data, tmp_path):
    """On disk (a slide), the panel's session writes the learned distance beside the class map and
    splits by it block by block as in memory; napari's writer splits the lazy maps alike; a
    cancelled run leaves nothing."""
    import threading

    from napari_cinuseg.io.images import read_rgb
    from napari_cinuseg.plugin.layer_metadata import SEPARATION_KEY, result_metadata
    from napari_cinuseg.plugin.writer import write_masks
    from napari_cinuseg.session.nuclei import segment_nuclei_and_measure

    model = load_model(BUNDLED_MODEL)
    image = read_rgb(shared_data / "consep" / "train" / "images" / "train_3_004.jpg")
    kw = {"tile": 256, "overlap": 32, "image_pixel_size": 0.25, "device": "cpu"}
    memory = drain(segment_nuclei_and_measure(model, image, **kw))
    disk = drain(segment_nuclei_and_measure(model, image, out=tmp_path / "r.zarr", **kw))
    assert (tmp_path / "r.separation.zarr").is_dir()
    np.testing.assert_array_equal(np.asarray(disk.separation), memory.separation)
    np.testing.assert_array_equal(np.asarray(disk.nuclei.labels), memory.nuclei.labels)
    meta = {"cinuseg": result_metadata(model.class_names, [c.colour for c in model.classes], model.id, 0.25)}
    _, lazy, _ = write_masks(
        tmp_path / "lazy.tif", disk.class_map, {"metadata": {**meta, SEPARATION_KEY: disk.separation}}
    )
    _, whole, _ = write_masks(
        tmp_path / "whole.tif", memory.class_map, {"metadata": {**meta, SEPARATION_KEY: memory.separation}}
    )
    assert Path(lazy).read_text() == Path(whole).read_text()

    cancel = threading.Event()
    cancel.set()
    assert drain(segment_nuclei_and_measure(model, image, out=tmp_path / "c.zarr", cancel=cancel, **kw)) is None
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(("c.", ".c."))]
