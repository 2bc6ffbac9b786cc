"""The names users choose from (encoders, decoders, data set layouts) and the label conventions.

Kept apart from the modules that use them, and free of heavy imports, so that the command line's
help, the napari manifest and the panel can list them without importing PyTorch.
"""

RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101")
EFFICIENTNETS = ("efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2")
ENCODERS = RESNETS + EFFICIENTNETS
DECODERS = ("unet", "aspp")
DATASETS = ("consep", "monusac", "folder")
# What of a data set a benchmark scores (benchmark/split.py): the validation split, or the tune
# or test part of train / tune / test.
BENCHMARK_SPLITS = ("val", "tune", "test")
# What a network sees: the RGB image, or only its hematoxylin optical density (nuclei), which
# carries across scanners and stains better (docs/benchmarks.md) and loses the colour
# that tells some classes apart.
INPUTS = ("rgb", "hematoxylin")
# What a network learns beside its class scores to split touching nuclei: nothing, or each
# nucleus pixel's normalised distance to the nucleus's border (model/network.py).
SEPARATIONS = ("none", "distance")

# The label value of an unlabelled pixel, in class maps, training targets and losses alike.
IGNORE = 255

# Nucleus-only data (every nucleus marked, its class not): MoNuSeg's instance maps, NuInsSeg's
# masks, or a folder of images/ + instances/ or masks/ (datasets/nucleus_only.py).
NUCLEUS_DATASETS = ("monuseg", "nuinsseg", "nuclei")
# The training-target value of a pixel known to be a nucleus of an unknown class (mixed
# supervision of a base model, losses.mixed_base_bce).
NUCLEUS = 254

# Nuclei as objects (inference/instances.py): how touching nuclei are split, and the smallest
# object kept (a nucleus is typically 20-60 µm²; below 3 µm², about 48 px at 0.25 µm/px, a speck).
# "distance": a marker-controlled watershed on a model's learned distance map, for a model
# with a separation head (model/network.py SEPARATIONS); the others work on the class map alone.
INSTANCE_METHODS = ("watershed", "components", "distance")
DEFAULT_MIN_AREA_UM2 = 3.0
