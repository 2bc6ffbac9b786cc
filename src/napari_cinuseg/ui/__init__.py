"""The napari panel: the only part of the package that imports Qt or napari.

- ``panel.py``: the panel, a composition of the four sections, and what each button starts;
- ``sections.py``: the sections' widgets (model, new class, train, segment and export);
- ``workers.py``: how a job runs in a napari worker, and how its failure is said;
- ``plot.py``: the live loss plot.

What the panel decides lives in the engine (``workflows.py``), shared with the command line.
"""
