"""Mixed supervision of a base model: nucleus-only pixels (MoNuSeg, NuInsSeg) teach nucleus vs
background and never one class against another; class pixels and background pixels as before."""

import numpy as np
import pytest
import torch

from napari_cinuseg.datasets.labelled import check_pairs
from napari_cinuseg.datasets.nucleus_only import (
    mixed_class_pairs,
    nucleus_pairs,
    read_monuseg,
    read_nuclei,
    read_nuinsseg,
)
from napari_cinuseg.losses import base_bce, mixed_base_bce, nucleus_only_bce
from napari_cinuseg.runtime.names import IGNORE, NUCLEUS


def _grad(logits, labels):
    z = logits.clone().requires_grad_(True)
    loss, _, _ = mixed_base_bce(z, labels, NUCLEUS)
    loss.sum().backward()
    return z.grad


def test_a_nucleus_only_pixel_never_moves_one_class_against_another():
    torch.manual_seed(0)
    z = torch.randn(2, 4, 5, 5) * 3  # background + 3 classes
    labels = torch.full((2, 5, 5), NUCLEUS, dtype=torch.long)
    g = _grad(z, labels)
    cls = g[:, 1:]
    # the same gradient on every class logit of a pixel: z_c - z_d never changes
    assert torch.allclose(cls, cls[:, :1].expand_as(cls), atol=1e-7)
    assert (cls < 0).all()  # all class scores raised together ...
    assert (g[:, 0] > 0).all()  # ... and the background's lowered
    # the loss does not depend on which class is which
    perm = z[:, [0, 3, 1, 2]]
    assert torch.allclose(mixed_base_bce(z, labels)[0], mixed_base_bce(perm, labels)[0])
    # and a pixel whose nucleus logit is large costs almost nothing
    sure = torch.zeros(1, 4, 1, 1)
    sure[:, 0] = -20
    assert nucleus_only_bce(sure, torch.ones(1, 1, 1, dtype=torch.bool)).item() < 1e-6


def test_background_and_class_pixels_push_class_scores():
    torch.manual_seed(1)
    z = torch.randn(1, 4, 3, 3)
    bg = torch.zeros((1, 3, 3), dtype=torch.long)
    g = _grad(z, bg)
    assert (g[:, 1:] > 0).all() and (g[:, 0] < 0).all()  # every class score lowered, background raised
    assert not torch.allclose(g[:, 1], g[:, 2])  # each by its own score: one class against another
    cls2 = torch.full((1, 3, 3), 2, dtype=torch.long)
    g = _grad(z, cls2)
    assert (g[:, 2] < 0).all() and (g[:, [0, 1, 3]] > 0).all()  # its class up, the others down


def test_mixed_loss_is_base_bce_without_nucleus_pixels_and_counts_both_kinds():
    torch.manual_seed(2)
    z = torch.randn(2, 3, 6, 6)
    labels = torch.randint(0, 3, (2, 6, 6))
    labels[0, 0, :3] = IGNORE
    loss, cls, nuc = mixed_base_bce(z, labels, NUCLEUS)
    assert torch.allclose(loss, base_bce(z, labels)) and (nuc == 0).all()
    labels[1, 3:] = NUCLEUS
    loss, cls, nuc = mixed_base_bce(z, labels, NUCLEUS)
    assert nuc[1] > 0 and nuc[0] == 0 and torch.allclose(loss, cls + nuc)


def test_nucleus_only_layouts(shared_data, tmp_path):
    mo = read_monuseg(shared_data / "monuseg", limit=2)
    assert len(mo.items) == 2 and mo.pixel_size == 0.25 and mo.class_names == []
    it = mo.items[0]
    assert set(np.unique(it.labels)) == {0, NUCLEUS}
    inst = mo.instances[it.name]
    assert inst.dtype == np.uint16 and inst.max() > 100 and ((inst > 0) == (it.labels == NUCLEUS)).all()
    assert mo.subset([it.source]).instances.keys() == {it.name}
    nu = read_nuinsseg(shared_data / "nuinsseg", limit=3)
    assert [i.name for i in nu.items] == ["1", "2", "3"] and not nu.instances
    assert all(set(np.unique(i.labels)) <= {0, NUCLEUS} for i in nu.items)
    # a generic folder: images/ + masks/, the source from the stem
    from skimage import io as skio

    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    for k in range(2):
        skio.imsave(tmp_path / "images" / f"slideA_{k}.png", np.full((16, 16, 3), 200, np.uint8), check_contrast=False)
        m = np.zeros((16, 16), np.uint8)
        m[4:8, 4:8] = 1
        skio.imsave(tmp_path / "masks" / f"slideA_{k}.png", m, check_contrast=False)
    f = read_nuclei(tmp_path)
    assert f.sources == ["slideA"] and (f.items[0].labels == NUCLEUS).sum() == 16
    with pytest.raises(FileNotFoundError, match="instances/"):
        read_nuclei(tmp_path / "images")


def test_class_sets_joined_by_name(consep):
    pairs = mixed_class_pairs(consep.subset(consep.sources[:1]), ["Epithelial"])
    it = consep.subset(consep.sources[:1]).items[0]
    p = pairs[0]
    assert ((p.target == 1) == (it.labels == consep.class_id("Epithelial"))).all()
    other = (it.labels > 0) & (it.labels != consep.class_id("Epithelial")) & (it.labels != IGNORE)
    assert (p.target[other] == NUCLEUS).all() and (p.target[it.labels == 0] == 0).all()


def test_train_base_on_mixed_supervision(shared_data, few_pairs, tiny):
    from napari_cinuseg import drain, train_base
    from napari_cinuseg.runtime.events import Progress

    mo = read_monuseg(shared_data / "monuseg", limit=2)
    pairs = list(few_pairs[0]) + nucleus_pairs(mo)
    with pytest.raises(ValueError, match="label"):
        check_pairs(nucleus_pairs(mo), 2)  # an incremental step's targets never hold NUCLEUS
    events = []
    model = drain(
        train_base(pairs, ["Epithelial", "Spindle-shaped"], tiny.replace(iterations=6, log_every=1), pixel_size=0.25),
        events.append,
    )
    terms = [e.terms for e in events if isinstance(e, Progress)]
    assert model is not None and all("nucleus" in t and "bce" in t for t in terms)
    assert any(t["nucleus"] > 0 for t in terms)  # the NUCLEUS target reached the loss
    assert model.steps[0].results["loss_curve"]["nucleus"]


def test_train_base_reads_several_data_sets(shared_data, tmp_path, capsys):
    from napari_cinuseg.cli import main
    from napari_cinuseg.model.file import read_record

    out = tmp_path / "mixed.cinuseg.pt"
    common = [
        "--data",
        str(shared_data / "consep"),
        "--iterations",
        "2",
        "--batch-size",
        "2",
        "--crop-size",
        "64",
        "--device",
        "cpu",
    ]
    mono = tmp_path / "mono"
    (mono / "images").mkdir(parents=True)
    (mono / "instances").mkdir()
    from skimage import io as skio

    src = shared_data / "monuseg" / "train"
    for name in sorted(p.stem for p in (src / "images").iterdir())[:3]:
        (mono / "images" / f"{name}.jpg").write_bytes((src / "images" / f"{name}.jpg").read_bytes())
        skio.imsave(
            mono / "instances" / f"{name}.png", skio.imread(src / "instances" / f"{name}.png"), check_contrast=False
        )
    assert (
        main(
            [
                "train-base",
                *common,
                "--classes",
                "Epithelial,Spindle-shaped",
                "--with",
                f"monuseg={mono}",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert "--with monuseg: 2 images (nucleus-only, split train)" in capsys.readouterr().err
    assert "nucleus" in read_record(out)["steps"][0]["results"]["loss_curve"]
    assert main(["train-base", *common, "--with", "nope", "--out", str(tmp_path / "x.cinuseg.pt")]) == 2
    assert "unknown data set 'nope'" in capsys.readouterr().err


def test_train_base_goes_on_from_a_base_model(base_file, few_pairs, tiny):
    from napari_cinuseg import drain, load_model, train_base

    init = load_model(base_file)
    with pytest.raises(ValueError, match="init"):
        drain(train_base(few_pairs[0], ["Epithelial"], tiny, init=init))
    model = drain(
        train_base(few_pairs[0], ["Epithelial", "Spindle-shaped"], tiny.replace(iterations=1, lr_base=0.0), init=init)
    )
    a, b = init.network.state_dict(), model.network.state_dict()
    weights = [k for k in a if k.endswith("weight") and a[k].is_floating_point()]
    assert weights and all(torch.equal(a[k].float(), b[k]) for k in weights)  # lr 0: the init's weights, untouched
    assert model.input == init.input and model.id != init.id
