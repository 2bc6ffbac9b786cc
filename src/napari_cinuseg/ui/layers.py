"""The layers the panel reads and makes: annotation layers in, training crops and results out.
Each takes the viewer and plain values; the layer-metadata contract is layer_metadata.py's."""

from __future__ import annotations

import numpy as np

from ..annotations import training_pair
from ..io.images import IN_MEMORY_LIMIT_PX, rgb_view
from ..plugin.reader import labels_colormap
from ..plugin.layer_metadata import ANNOTATION_KEY, EXHAUSTIVE_KEY, RESULT_KEY, result_metadata


def level0(layer):
    """The layer's full-resolution image as the engine reads it: RGB uint8 (converted, with a
    notice, or refused with a ValueError that says what to do)."""
    data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
    return rgb_view(data, f"image layer {layer.name!r}")


def add_annotation_layer(viewer, image, name: str, colour: str, exhaustive: bool):
    """A Labels layer over ``image`` to paint ``name`` (1) and background (2) on; in memory, or
    zarr for a slide; with ``exhaustive`` also a Shapes layer for the exhaustive rectangles."""
    import zarr

    h, w = level0(image).shape[:2]
    data = np.zeros((h, w), np.uint8) if h * w <= IN_MEMORY_LIMIT_PX else zarr.zeros((h, w), chunks=(1024, 1024), dtype="uint8")
    layer = viewer.add_labels(
        data, name=f"{image.name} · {name} annotation", colormap=labels_colormap({1: colour, 2: "#9e9e9e"}),
        metadata={ANNOTATION_KEY: {"image": image.name, "class": name}},
    )
    layer.selected_label, layer.brush_size, layer.mode = 1, 8, "paint"
    if exhaustive:
        viewer.add_shapes(
            name=f"{image.name} · exhaustive regions", edge_color="yellow", face_color="transparent", edge_width=4,
            metadata={EXHAUSTIVE_KEY: {"image": image.name}},
        )
        viewer.layers.selection.active = layer
    return layer


def annotation_pairs(viewer, class_name: str, exhaustive: bool) -> tuple[list, list]:
    """Every annotation layer of ``class_name`` as training pairs (annotations.training_pair),
    and where each pair's crop lies: (image layer name, y0, x0)."""
    from napari.layers import Labels, Shapes

    pairs, crops = [], []
    for layer in viewer.layers:
        info = layer.metadata.get(ANNOTATION_KEY) if isinstance(layer, Labels) else None
        if not info or info["class"].lower() != class_name.lower():
            continue
        if info["image"] not in viewer.layers:
            raise ValueError(f"the image {info['image']!r} of layer {layer.name!r} is no longer open")
        image = viewer.layers[info["image"]]
        regions = []
        if exhaustive:
            for sl in viewer.layers:
                if isinstance(sl, Shapes) and sl.metadata.get(EXHAUSTIVE_KEY, {}).get("image") == image.name:
                    regions += list(sl.data)
        found = training_pair(level0(image), np.asarray(layer.data), 1, regions, name=image.name)
        if found is None:
            continue
        pairs.append(found[0])
        crops.append((image.name, *found[1]))
    if not pairs:
        raise ValueError(f"nothing is painted for {class_name!r}: add an annotation layer and paint some examples")
    return pairs, crops


def add_att_layer(viewer, crops: list, pair_origins: list) -> None:
    """The last training crops as outlines, so the tissue stays visible: orange where ATT fired
    (r > σ), cyan where not, each labelled with r, t_o and t_n."""
    rects, feats = [], {"r": [], "t_o": [], "t_n": [], "att": []}
    for c in crops:
        if c.image_index >= len(pair_origins):
            continue
        _, y0, x0 = pair_origins[c.image_index]
        top, left = y0 + c.top, x0 + c.left
        rects.append(np.array([[top, left], [top + c.size, left + c.size]]))
        for k in ("r", "t_o", "t_n"):
            feats[k].append(getattr(c, k))
        feats["att"].append("fired" if c.t_o != 1 else "off")
    if rects:
        viewer.add_shapes(
            rects, shape_type="rectangle", name="last training crops (ATT)", features=feats,
            face_color="transparent", edge_color="att", edge_width=3,
            edge_color_cycle=["#ff8c00", "#00c8ff"] if feats["att"][0] == "fired" else ["#00c8ff", "#ff8c00"],
            text={"string": "r={r:.2f} t_o={t_o:g} t_n={t_n:g}", "size": 8, "color": "white", "anchor": "upper_left"},
        )


def add_result_layers(viewer, image_name: str, class_map, model, pixel_size: float | None) -> None:
    """All classes in one Labels layer (names and colours in its features), then one hidden mask
    per class; a slide's on-disk pyramid [level 0, level 1, …] is shown lazily (multiscale)."""
    import pandas as pd

    multiscale = isinstance(class_map, list)
    colours = [c.colour for c in model.classes]
    features = pd.DataFrame({"index": range(model.num_channels), "name": ["background"] + model.class_names, "colour": ["#000000"] + colours})
    meta = {RESULT_KEY: result_metadata(model.class_names, colours, model.id, pixel_size)}
    viewer.add_labels(
        class_map, name=f"{image_name} · classes", colormap=labels_colormap(dict(enumerate(colours, start=1))),
        features=features, metadata=meta, multiscale=multiscale,
    )
    for i, c in enumerate(model.classes, start=1):
        if multiscale:
            import dask.array as da

            mask = [(da.from_zarr(level) == i).astype(np.uint8) for level in class_map]
        else:
            mask = (class_map == i).astype(np.uint8)
        viewer.add_labels(mask, name=f"{image_name} · {c.name}", colormap=labels_colormap({1: c.colour}), visible=False, multiscale=multiscale)


def result_layer(viewer):
    """The newest class-map layer (one the panel made or the reader opened)."""
    from napari.layers import Labels

    for layer in reversed(list(viewer.layers)):
        if isinstance(layer, Labels) and RESULT_KEY in layer.metadata:
            return layer
    raise ValueError("segment an image first")
