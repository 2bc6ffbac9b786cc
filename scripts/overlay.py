"""A picture of what a model finds on an image: the image with each nucleus outlined in its
class colour, for docs/usage.md ("What it knows").

    python3 scripts/overlay.py --model src/napari_cinuseg/resources/base-consep.cinuseg.pt \
        --image src/napari_cinuseg/resources/cmu1-region.jpg --pixel-size 0.499 \
        --out docs/images/bundled-on-sample.jpg
"""

from __future__ import annotations

import argparse


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="the model file")
    ap.add_argument("--image", required=True, help="an RGB image (PNG/JPEG/TIFF)")
    ap.add_argument("--pixel-size", type=float, help="µm per pixel of the image (it is resampled to the model's)")
    ap.add_argument("--out", required=True, help="the PNG to write")
    args = ap.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from skimage.measure import find_contours, label

    from napari_cinuseg import drain, load_model
    from napari_cinuseg.inference.segmentation import segment
    from napari_cinuseg.io.images import read_rgb

    model = load_model(args.model)
    image = read_rgb(args.image)
    class_map = drain(segment(model, image, device="cpu", image_pixel_size=args.pixel_size, min_tissue=0))
    fig, axes = plt.subplots(1, 2, figsize=(12, 6.4), dpi=110)
    for ax in axes:
        ax.imshow(image)
        ax.set_axis_off()
    counts = []
    for i, c in enumerate(model.classes, start=1):
        mask = class_map == i
        counts.append(f"{c.name}: {int(label(mask, connectivity=1).max())}")
        for contour in find_contours(mask.astype(float), 0.5):
            axes[1].plot(contour[:, 1], contour[:, 0], color=c.colour, lw=0.8)
    axes[0].set_title("image", fontsize=9)
    axes[1].set_title(f"{args.model.split('/')[-1]}: nuclei found — " + ", ".join(counts), fontsize=9)
    fig.tight_layout()
    fig.savefig(args.out, **({"pil_kwargs": {"quality": 85}} if args.out.lower().endswith((".jpg", ".jpeg")) else {}))
    print(f"saved {args.out} ({', '.join(counts)}; foreground {float((class_map > 0).mean()):.3f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
