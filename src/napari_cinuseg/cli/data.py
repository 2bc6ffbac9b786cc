"""The labelled data a ``cinuseg`` command reads: ``--dataset``, ``--data``, the part ``--split``
names, and train-base's ``--with`` data sets. Engine modules are imported inside each function,
so that the help answers at once."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..runtime.names import DATASETS, NUCLEUS_DATASETS
from .console import CONSOLE


def load_data(args: argparse.Namespace):
    """The part of --data (a --dataset layout; default: the shared data's) that --split names."""
    from ..datasets.labelled import data_dir  # noqa: PLC0415 - as the import below
    from ..datasets.layouts import read_dataset  # noqa: PLC0415 - scikit-image loads only once a command runs (+300 ms on `cinuseg --help`)
    from ..datasets.splits import split_by_source  # noqa: PLC0415 - as the import beside it

    data = read_dataset(args.dataset, args.data or data_dir() / args.dataset)
    return _split(data, args, split_by_source)


def _split(data, args: argparse.Namespace, split_by_source):
    """The part of ``data`` that --split names; --val-fraction 0 holds nothing out (all of it is
    "train", and "val" is refused rather than given an image that was meant for training)."""
    if args.split == "all":
        return data
    if args.val_fraction == 0:
        if args.split == "val":
            raise ValueError(
                "--val-fraction 0 holds out no image, so --split val has none to use; give a share above 0 "
                "(e.g. --val-fraction 0.2) or --split all"
            )
        return data
    train, val = split_by_source(data, args.val_fraction, args.split_seed)
    return train if args.split == "train" else val


def more_pairs(spec: str, classes: list[str], args: argparse.Namespace) -> list:
    """The training pairs of one ``--with KIND[=FOLDER]`` of train-base, split as --split says."""
    from ..datasets.labelled import data_dir  # noqa: PLC0415 - as the import beside it
    from ..datasets.layouts import read_dataset  # noqa: PLC0415 - scikit-image loads only once a command runs (+300 ms on `cinuseg --help`)
    from ..datasets.nucleus_only import mixed_class_pairs, nucleus_pairs  # noqa: PLC0415 - scikit-image loads only once a command runs (+300 ms on `cinuseg --help`)
    from ..datasets.splits import split_by_source  # noqa: PLC0415 - as the import beside it

    kind, _, folder = spec.partition("=")
    if kind not in DATASETS + NUCLEUS_DATASETS:
        raise ValueError(
            f"--with {spec}: unknown data set {kind!r}; choose one of {', '.join(DATASETS + NUCLEUS_DATASETS)}"
        )
    root = Path(folder) if folder else data_dir() / kind
    if not root.is_dir():
        raise FileNotFoundError(
            f"--with {spec}: no folder at {root}; "
            + (f"give the {kind} data's folder as --with {kind}=FOLDER" if folder else f"give --with {kind}=FOLDER")
        )
    data = _split(read_dataset(kind, root), args, split_by_source)
    pairs = nucleus_pairs(data) if kind in NUCLEUS_DATASETS else mixed_class_pairs(data, classes)
    CONSOLE.say(
        f"--with {kind}: {len(pairs)} images "
        f"({'nucleus-only' if kind in NUCLEUS_DATASETS else 'classes'}, split {args.split})"
    )
    return pairs
