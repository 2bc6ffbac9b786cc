"""Files in and out: what an input image may be (images), whole slides read lazily with their
pixel size (slides), the pyramid of a class map on disk (pyramid), the pyramidal OME-TIFF masks
export (export) and atomic writes (atomic). No PyTorch here."""
