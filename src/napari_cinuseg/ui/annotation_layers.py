"""The annotation layers a user paints on: made over an image with their labels named (the class,
background, the model's classes as corrections), found again by class, and turned into the
engine's training pairs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import zarr
from napari.layers import Labels, Shapes

from ..annotations import painted_corrections, training_pair
from ..io.images import IN_MEMORY_LIMIT_PX
from ..plugin.layer_metadata import (
    ANNOTATION_KEY,
    EXHAUSTIVE_KEY,
)
from ..plugin.reader import labels_colormap
from .layers import BACKGROUND_PAINT, level0, paint_colour


def add_annotation_layer(viewer, image, name: str, colour: str, exhaustive: bool, data=None, corrections=()):
    """A Labels layer over ``image`` to paint ``name`` (1, in :func:`paint_colour`; the class's own
    ``colour`` travels in its metadata) and background (2, grey) on, and with ``corrections``
    ((class name, colour) of the model's other classes) those classes from label 3 on, in their
    own colours, to correct what the model calls a nucleus; each label's name is in the layer's
    features (napari shows it under the mouse). In memory, or zarr for a slide; ``data``: an
    annotation opened again (else empty). With ``exhaustive`` also a Shapes layer for the
    exhaustive rectangles."""

    h, w = level0(image).shape[:2]
    if data is not None:
        if tuple(data.shape[:2]) != (h, w):
            raise ValueError(
                f"the annotation is {tuple(data.shape[:2])} but the image {image.name!r} is {(h, w)}; open it "
                "over the image it was painted on"
            )
    elif h * w <= IN_MEMORY_LIMIT_PX:
        data = np.zeros((h, w), np.uint8)
    else:
        data = zarr.zeros((h, w), chunks=(1024, 1024), dtype="uint8")
    corrections = list(corrections)
    colours = {1: paint_colour(colour), 2: BACKGROUND_PAINT}
    colours.update({3 + i: c for i, (_, c) in enumerate(corrections)})
    info = {"image": image.name, "class": name, "colour": colour}
    if corrections:
        info["corrections"] = [n for n, _ in corrections]
    layer = viewer.add_labels(
        data,
        name=f"{image.name} · {name} annotation",
        colormap=labels_colormap(colours),
        metadata={ANNOTATION_KEY: info},
        features=pd.DataFrame({"index": range(3 + len(corrections)), "paint": paint_names(info)}),
    )
    layer.selected_label, layer.brush_size, layer.mode = 1, 8, "paint"
    if exhaustive:
        viewer.add_shapes(
            name=f"{image.name} · exhaustive regions",
            edge_color="yellow",
            face_color="transparent",
            edge_width=4,
            metadata={EXHAUSTIVE_KEY: {"image": image.name}},
        )
        viewer.layers.selection.active = layer
    return layer


def paint_names(info: dict) -> list[str]:
    """What each label of an annotation layer paints, label 0 first: its class, background, and
    the model's classes it corrects."""
    fixes = [f"{c} (correction)" for c in info.get("corrections", [])]
    return ["unpainted", info["class"], "background", *fixes]


def annotation_layers(viewer, class_name: str | None = None) -> list:
    """The annotation layers (of ``class_name``, where given)."""

    out = []
    for layer in viewer.layers:
        info = layer.metadata.get(ANNOTATION_KEY) if isinstance(layer, Labels) else None
        if info and (class_name is None or info["class"].lower() == class_name.lower()):
            out.append(layer)
    return out


def annotation_pairs(viewer, class_name: str, exhaustive: bool) -> tuple[list, list, list]:
    """Every annotation layer of ``class_name`` as training pairs (annotations.training_pair),
    where each pair's crop lies: (image layer name, y0, x0), and the model's classes painted as
    corrections (label 3 on), the same in every layer."""

    pairs, crops, corrections = [], [], None
    for layer in annotation_layers(viewer, class_name):
        info = layer.metadata[ANNOTATION_KEY]
        fixes = list(info.get("corrections", []))
        if corrections is not None and fixes != corrections:
            raise ValueError(
                f"the annotation layers of {class_name!r} correct different classes ({corrections} and {fixes}); "
                "paint in one of them, or in layers made for the same model"
            )
        corrections = fixes
        if info["image"] not in viewer.layers:
            raise ValueError(f"the image {info['image']!r} of layer {layer.name!r} is no longer open")
        image = viewer.layers[info["image"]]
        regions = []
        if exhaustive:
            for sl in viewer.layers:
                if isinstance(sl, Shapes) and sl.metadata.get(EXHAUSTIVE_KEY, {}).get("image") == image.name:
                    regions += list(sl.data)
        found = training_pair(level0(image), np.asarray(layer.data), 1, regions, name=image.name, n_old=len(fixes))
        if found is None:
            continue
        pairs.append(found[0])
        crops.append((image.name, *found[1]))
    if not pairs:
        raise ValueError(f"nothing is painted for {class_name!r}: add an annotation layer and paint some examples")
    pairs, corrections = painted_corrections(pairs, corrections or [])
    return pairs, crops, corrections
