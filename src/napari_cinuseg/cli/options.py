"""The command line's option types: each turns an option's text into a value or refuses it with
what is wrong, as argparse shows it ("argument --x: …")."""

from __future__ import annotations

import argparse
import math

from ..io.pixel_size import checked_pixel_size


def pixel_size(text: str) -> float:
    """--pixel-size: a positive, finite number of µm per pixel in the plausible range
    (io.pixel_size; 0, a negative value, NaN or 1e9 is refused here, not taken for "unknown",
    believed, or met later as an error about tiles)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number; give µm per pixel, e.g. 0.25 for 40×") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(
            f"{text} is not a pixel size: give a positive number of µm per pixel (e.g. 0.25 for 40×, 0.5 for 20×), "
            "or leave the option out to use what the file says"
        )
    try:
        return checked_pixel_size(value, text, fix="give µm per pixel, e.g. 0.25 for 40×, 0.5 for 20×")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def fraction(text: str) -> float:
    """--val-fraction: a share of the sources in 0..1 (1 excluded: something must be left to train
    on); NaN, a negative value or 1.5 is refused here, not met later as a wrong split."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number; give a share such as 0.2") from None
    if not 0 <= value < 1:  # NaN fails this too
        raise argparse.ArgumentTypeError(
            f"{text} is not a share of the images: give a number from 0 (hold none out) to below 1, e.g. 0.2"
        )
    return value


def positive_int(text: str) -> int:
    """A whole number of at least 1 (a batch of 0 tiles would never end)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number; give 1 or more") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is too small: give a whole number of 1 or more")
    return value


def area(text: str) -> float:
    """--min-area: a finite number of µm², 0 or more (inf would drop every nucleus)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number; give an area in µm², e.g. 10") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(
            f"{text} is not an area: give a finite number of µm², 0 or more (0 keeps every nucleus)"
        )
    return value
