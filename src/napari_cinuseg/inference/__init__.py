"""Inference: tiled segmentation of images and slides, resampled to the model's pixel size
(segmentation), and the tile grid and blending (tiling)."""
