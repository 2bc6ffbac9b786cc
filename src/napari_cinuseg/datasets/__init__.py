"""Labelled data: the labelled set, its readers and splits by source (labelled), which reader a
folder needs (layouts), the data sets' original layouts (original_layouts) and the paper's step
protocols (protocols). No PyTorch here."""
