"""The layers the panel reads and makes: annotation layers in, training crops and results out.
Each takes the viewer and plain values; the layer-metadata contract is layer_metadata.py's.

A layer made from a result carries ``PANEL_LAYER_KEY`` (its image and kind): a newer result of
the same image and kind takes its place in the layer list instead of piling up beside it.
"""

from __future__ import annotations

import dask.array as da
import numpy as np
import pandas as pd
from napari.layers import Labels, Shapes

from ..inference.instances import nuclei_of
from ..io.images import rgb_view
from ..plugin.layer_metadata import (
    NUCLEI_KEY,
    PANEL_LAYER_KEY,
    RESULT_KEY,
    SEPARATION_KEY,
    layer_pixel_size,
    result_metadata,
)
from ..plugin.reader import labels_colormap

# ATT's two cases, as docs/usage.md's legend gives them
ATT_FIRED, ATT_OFF = "#ff8c00", "#00c8ff"
# The paint on an annotation layer: the new class in a colour of its own (none of the class
# palette's), so paint and the step's result in the class colours are told apart; background grey.
PAINT_COLOUR, PAINT_COLOUR_ELSE, BACKGROUND_PAINT = "#ffe119", "#ffffff", "#9e9e9e"


def paint_colour(class_colour: str) -> str:
    """The colour the new class is painted in: :data:`PAINT_COLOUR`, or white where the class
    itself is that colour."""
    return PAINT_COLOUR_ELSE if class_colour.lower() == PAINT_COLOUR else PAINT_COLOUR


def level0(layer):
    """The layer's full-resolution image as the engine reads it: RGB uint8 (converted, with a
    notice, or refused with a ValueError that says what to do)."""
    data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
    return rgb_view(data, f"image layer {layer.name!r}")


def panel_layers(viewer, image_name: str | None = None, kind: str | None = None) -> list:
    """The layers the panel made (of ``image_name`` and ``kind``, where given)."""
    out = []
    for layer in viewer.layers:
        info = layer.metadata.get(PANEL_LAYER_KEY)
        if info and (image_name is None or info["image"] == image_name) and (kind is None or info["kind"] == kind):
            out.append(layer)
    return out


def remove_panel_layers(viewer, image_name: str | None = None, kind: str | None = None) -> None:
    for layer in panel_layers(viewer, image_name, kind):
        viewer.layers.remove(layer)


def _put(viewer, layer, image_name: str, kinds: tuple[str, ...]) -> object:
    """Add ``layer`` where the panel's older layers of ``image_name`` and ``kinds`` were (they
    go), else on top."""
    layer.metadata[PANEL_LAYER_KEY] = {"image": image_name, "kind": kinds[0]}
    old = [ly for k in kinds for ly in panel_layers(viewer, image_name, k)]
    index = min((viewer.layers.index(ly) for ly in old), default=len(viewer.layers))
    active = viewer.layers.selection.active  # the layer being painted stays the one selected
    for ly in old:
        viewer.layers.remove(ly)
    viewer.layers.insert(min(index, len(viewer.layers)), layer)
    if active is not None and active in viewer.layers:
        viewer.layers.selection.active = active
    return layer


def add_att_layer(viewer, crops: list, pair_origins: list, scale: float = 1.0):
    """The last training crops as outlines, hidden until the user shows it: orange where ATT
    fired (t_o ≠ 1), cyan where not; r, t_o and t_n are the layer's features (shown for the
    shape under the mouse), with no text on the canvas. Replaces the previous one. ``scale``:
    the step's model pixels per image pixel (its crops are in the resampled pairs' pixels)."""

    rects, feats, colours = [], {"r": [], "t_o": [], "t_n": [], "att": []}, []
    for c in crops:
        if c.image_index >= len(pair_origins):
            continue
        _, y0, x0 = pair_origins[c.image_index]
        top, left, size = y0 + c.top / scale, x0 + c.left / scale, c.size / scale
        rects.append(np.array([[top, left], [top + size, left + size]]))
        for k in ("r", "t_o", "t_n"):
            feats[k].append(round(float(getattr(c, k)), 3))
        fired = c.t_o != 1
        feats["att"].append("fired" if fired else "off")
        colours.append(ATT_FIRED if fired else ATT_OFF)
    if not rects:
        return None
    layer = Shapes(
        rects,
        shape_type="rectangle",
        name="last training crops (ATT)",
        features=feats,
        face_color="transparent",
        edge_color=colours,
        edge_width=3,
        visible=False,
    )
    return _put(viewer, layer, "", ("att",))  # one such layer, whichever images the step used


def show_region(
    viewer, image_name: str, kind: str, class_map: np.ndarray, origin: tuple[int, int], colours: list[str], title: str
):
    """A class map of part of an image (a painted region) at ``origin`` in it, as a Labels layer
    named ``<image> · <title>``. The panel's layer of the same image and kind is updated in place
    (new data, place, name and colours): making a napari layer costs the viewer's thread about
    half a second (its visuals), an update one frame; so the live preview and then the step's
    result are one layer."""

    colormap = labels_colormap(dict(enumerate(colours, start=1)))
    name = f"{image_name} · {title}"
    for layer in panel_layers(viewer, image_name, kind):
        if tuple(layer.translate) != tuple(origin):
            layer.translate = origin
        if len(getattr(layer.colormap, "color_dict", None) or {}) != len(
            colormap.color_dict
        ):  # a reserved layer has none
            layer.colormap = colormap
        if isinstance(layer.data, np.ndarray) and layer.data.shape == class_map.shape and layer.data.flags.writeable:
            layer.data[...] = class_map  # in place, then one refresh: about half the cost of new data
            layer.refresh()
        else:
            layer.data = np.array(class_map)
        if layer.name != name:
            layer.name = name
        if not layer.visible:
            layer.visible = True
        return layer
    layer = Labels(np.array(class_map), name=name, translate=origin, opacity=0.6, colormap=colormap)  # its own copy
    return _put(viewer, layer, image_name, (kind,))


PREVIEW_TITLE = "preview (training)"  # the title of a step result's layer while a step trains


def reserve_region(viewer, image_name: str, kind: str, title: str):
    """An empty, hidden layer of ``kind`` for ``image_name`` (``<image> · <title>``), made now,
    while the user paints, so that the live preview and the step's result later only update it:
    making a napari layer costs the viewer's thread 100-300 ms, showing a hidden one a frame."""

    found = panel_layers(viewer, image_name, kind)
    if found:
        return found[0]
    layer = Labels(np.zeros((1, 1), np.uint8), name=f"{image_name} · {title}", opacity=0.6, visible=False)
    return _put(viewer, layer, image_name, (kind,))


def is_placeholder(layer) -> bool:
    """A layer :func:`reserve_region` or :func:`clear_regions` left empty and hidden for the next run."""
    return not layer.visible and tuple(layer.data.shape) == (1, 1)


def show_regions_of(viewer, kind: str, image_name: str) -> None:
    """The panel's layers of ``kind`` shown for ``image_name`` and hidden for every other image
    (empty placeholders stay hidden)."""
    for layer in panel_layers(viewer, kind=kind):
        if not is_placeholder(layer):
            layer.visible = layer.metadata[PANEL_LAYER_KEY]["image"] == image_name


def clear_regions(viewer, kind: str, title: str) -> None:
    """The panel's layers of ``kind`` emptied and hidden, named ``<image> · <title>`` again (kept
    for the next run: see :func:`reserve_region`)."""
    for layer in panel_layers(viewer, kind=kind):
        layer.visible = False
        layer.data = np.zeros((1, 1), np.uint8)
        layer.translate = (0, 0)
        layer.name = f"{layer.metadata[PANEL_LAYER_KEY]['image']} · {title}"


PIXELS_TITLE = "class map (pixels)"  # the title of the hidden layer of a result's pixel classes


def add_result_layers(
    viewer,
    image_name: str,
    class_map,
    model,
    pixel_size: float | None,
    nuclei=None,
    object_map=None,
    separation=None,
) -> None:
    """A segmentation's layers, bottom to top; they replace the panel's previous result of this
    image. ``object_map`` (the class map of the nuclei: each nucleus whole in its one class,
    ``session.nuclei.SegmentedNuclei.object_map``) is what the ``· classes`` layer and the
    per-class masks show, so no nucleus holds two classes; the class map of pixels then stays
    available as the hidden layer ``· class map (pixels)``, below it. Without one, the class map
    itself is shown.

    - ``· class map (pixels)``: hidden (with ``object_map`` only);
    - ``· classes``: all classes in one Labels layer (names and colours in its features; the
      export's layer, with the nuclei for it);
    - ``· nuclei``: an id per nucleus (its class in the features), hidden: its colours are one per
      nucleus, not per class (in-memory maps only: a slide's instance map stays on disk for the
      export);
    - one hidden mask per class.

    ``separation``: the model's learned distance map that split the nuclei (a model with a
    separation head), kept on both class-map layers for a later split (:func:`nuclei_of_result`).
    A slide's on-disk pyramids [level 0, level 1, …] are shown lazily (multiscale)."""

    multiscale = isinstance(class_map, list)
    shown = class_map if object_map is None else object_map
    colours = [c.colour for c in model.classes]
    colormap = labels_colormap(dict(enumerate(colours, start=1)))
    features = pd.DataFrame(
        {
            "index": range(model.num_channels),
            "name": ["background"] + model.class_names,
            "colour": ["#000000"] + colours,
        }
    )

    def metadata() -> dict:
        meta = {RESULT_KEY: result_metadata(model.class_names, colours, model.id, pixel_size)}
        if separation is not None:
            meta[SEPARATION_KEY] = separation
        return meta

    new = []
    if object_map is not None:
        pixels = Labels(
            class_map,
            name=f"{image_name} · {PIXELS_TITLE}",
            colormap=colormap,
            features=features,
            metadata=metadata(),
            multiscale=multiscale,
            visible=False,
        )
        pixels.metadata[PANEL_LAYER_KEY] = {"image": image_name, "kind": "pixels"}
        new.append(pixels)
    classes = Labels(
        shown,
        name=f"{image_name} · classes",
        colormap=colormap,
        features=features,
        metadata=metadata(),
        multiscale=multiscale,
    )
    if nuclei is not None:
        classes.metadata[NUCLEI_KEY] = nuclei

        def forget_nuclei(event=None, layer=classes):  # edited by hand: the export splits it again
            layer.metadata.pop(NUCLEI_KEY, None)

        classes.events.paint.connect(forget_nuclei)
        classes.events.data.connect(forget_nuclei)
    classes.metadata[PANEL_LAYER_KEY] = {"image": image_name, "kind": "classes"}
    new.append(classes)
    # where the old result was
    old = [ly for kind in ("pixels", "classes", "nuclei", "mask") for ly in panel_layers(viewer, image_name, kind)]
    index = min((viewer.layers.index(ly) for ly in old), default=len(viewer.layers))
    for ly in old:
        viewer.layers.remove(ly)
    if nuclei is not None and isinstance(nuclei.labels, np.ndarray):
        names = ["background"] + model.class_names
        objects = Labels(
            nuclei.labels,
            name=f"{image_name} · nuclei",
            opacity=0.5,
            visible=False,
            features=pd.DataFrame({"index": range(nuclei.count + 1), "class": [names[int(c)] for c in nuclei.classes]}),
        )
        objects.metadata[PANEL_LAYER_KEY] = {"image": image_name, "kind": "nuclei"}
        new.append(objects)
    for i, c in enumerate(model.classes, start=1):
        if multiscale:
            mask = [(da.from_zarr(level) == i).astype(np.uint8) for level in shown]
        else:
            mask = (shown == i).astype(np.uint8)
        layer = Labels(
            mask,
            name=f"{image_name} · {c.name}",
            colormap=labels_colormap({1: c.colour}),
            visible=False,
            multiscale=multiscale,
        )
        layer.metadata[PANEL_LAYER_KEY] = {"image": image_name, "kind": "mask"}
        new.append(layer)
    for offset, layer in enumerate(new):
        viewer.layers.insert(min(index + offset, len(viewer.layers)), layer)
    viewer.layers.selection.active = classes


def nuclei_of_result(viewer, layer):
    """The nuclei (objects) of a class-map layer: those its segmentation found, or for a class
    map edited by hand or opened from a file, split from it now (inference.instances.nuclei_of:
    by the model's learned distance where the layer carries it, else by the watershed; no Qt call,
    so a worker may run it)."""
    nuclei = layer.metadata.get(NUCLEI_KEY)
    if nuclei is not None:
        return nuclei

    data = layer.data[0] if layer.multiscale else layer.data
    return nuclei_of(
        data, pixel_size_um=layer_pixel_size(layer.metadata), separation=layer.metadata.get(SEPARATION_KEY)
    )


def result_layer(viewer):
    """The newest class-map layer (one the panel made or the reader opened)."""

    for layer in reversed(list(viewer.layers)):
        if isinstance(layer, Labels) and RESULT_KEY in layer.metadata:
            return layer
    raise ValueError("segment an image first")
