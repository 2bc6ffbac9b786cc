"""The contract between the napari reader, writer and panel: which keys of a layer's
``metadata`` say what. One place, so that a layer the reader opens, the panel makes or the writer
saves is understood by the other two.

- ``RESULT_KEY``: on a class-map Labels layer, ``{"class_names", "colours", "model_id",
  "pixel_size_um"}`` (the reader sets it on a masks file it opens; the panel on its result).
- ``PIXEL_SIZE_KEY``: on an image layer, µm per pixel where its file says it (the reader).
- ``ANNOTATION_KEY``: on a Labels layer the panel made for painting,
  ``{"image": image layer name, "class": class name, "colour": its colour}``.
- ``EXHAUSTIVE_KEY``: on a Shapes layer of rectangles where everything unpainted is
  background, ``{"image": image layer name}``.
- ``NUCLEI_KEY``: on a class-map Labels layer the panel made, the segmentation's nuclei as objects
  (``inference.instances.Nuclei``), for the export;
- ``SEPARATION_KEY``: on the class-map Labels layers the panel made with a model that has a
  separation head, its learned distance map of the image (uint8, level 0's size), so that a
  class map edited by hand (or the class map of pixels) is split into nuclei as the segmentation
  split it (``inference.instances.nuclei_of``, by the learned distance where it is given);
- ``PANEL_LAYER_KEY``: on a layer the panel made from a result, ``{"image": image layer name,
  "kind": what it shows}`` (kinds: ``classes`` (the nuclei, each in its one class), ``pixels``
  (the class map of pixels), ``nuclei``, ``mask``, ``step result`` (the live preview
  while a step trains, then its result), ``att``); a newer result of the same image and kind
  replaces it.
"""

RESULT_KEY = "cinuseg"
PIXEL_SIZE_KEY = "pixel_size_um"
ANNOTATION_KEY = "cinuseg_annotation"
EXHAUSTIVE_KEY = "cinuseg_exhaustive"
PANEL_LAYER_KEY = "cinuseg_panel_layer"
NUCLEI_KEY = "cinuseg_nuclei"
SEPARATION_KEY = "cinuseg_separation"


def result_metadata(class_names, colours, model_id, pixel_size_um=None) -> dict:
    """The ``RESULT_KEY`` entry of a class-map layer."""
    return {
        "class_names": list(class_names),
        "colours": list(colours),
        "model_id": model_id,
        PIXEL_SIZE_KEY: pixel_size_um,
    }


def layer_pixel_size(metadata: dict | None) -> float | None:
    """µm per pixel a layer's metadata gives, as an image's or a class map's, else None."""
    metadata = metadata or {}
    return metadata.get(PIXEL_SIZE_KEY) or (metadata.get(RESULT_KEY) or {}).get(PIXEL_SIZE_KEY)
