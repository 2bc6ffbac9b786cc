"""The user's session, headless: what the napari panel and the command line both decide, decided
once.

- ``storage.py``: where new models and on-disk results go, and how files are named;
- ``learning.py``: a base step or an incremental one for a painted class;
- ``preview.py``: a live preview of the painted regions while a step trains;
- ``review.py``: a step's review on the painted regions, in plain words;
- ``att.py``: what ATT did to a training iteration's crops, in plain words;
- ``candidate.py``: a step's result awaiting Keep or Discard, and what each does to its file;
- ``picking.py``: a click on a nucleus takes the model's whole nucleus object as painted;
- ``nuclei.py``: segmentation as nuclei (objects) with their counts, and its export.

What a user painted becomes training pairs in :mod:`napari_cinuseg.annotations`, a floor below.
Each long job is a generator of typed events (:mod:`napari_cinuseg.runtime.events`).
"""
