"""The npe2 contributions besides the panel (``ui/``): the reader of H&E images and slides, the
writer of class masks, the sample image, and the metadata the panel's layers carry."""
