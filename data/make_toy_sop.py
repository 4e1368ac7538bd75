"""Write a small, procedurally drawn stand-in for Stanford Online Products (SOP), in SOP's own layout.

    python data/make_toy_sop.py --out_dir=data/toy_sop --num_train_classes=300 --num_test_classes=300

The result reads like data/Stanford_Online_Products/: `Ebay_train.txt` and `Ebay_test.txt` (header
`image_id class_id super_class_id path`, then one image per line) and JPEGs under `<super_class>_final/`, named
`<product_id>_<view>.JPG`. Each class is one drawn "product" (a super-class shape, colours, a fill pattern and a few
marks); each image is another view of it (pose, scale, crop, background, lighting, occlusion, blur, noise).

Unlike real SOP, where test class ids continue after the train ones (11319..22634), each file numbers its classes
from 1. Train and test never share a product: their product ids are drawn together, without repetition.

The same arguments and seed give byte-identical files. The script only ever replaces a directory it made itself.
"""
import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import time

import cv2
import numpy as np
from PIL import Image, ImageDraw

HEADER = "image_id class_id super_class_id path"
MARKER_NAME = ".made_by_make_toy_sop"
# Stored in the marker: bump it when the drawing changes, so an old data set is not taken for a current one.
GENERATOR_VERSION = 1
# Shapes are drawn this many times larger, then shrunk, to get smooth (anti-aliased) edges.
SUPERSAMPLE = 2
JPEG_QUALITY = 90

# The 12 SOP super classes, each with its shape family: (name, kind, corners for polygons and stars, width/height).
SUPER_CLASSES = [
    ("bicycle", "ellipse", 0, (1.3, 1.8)),
    ("cabinet", "rectangle", 0, (0.45, 0.75)),
    ("chair", "polygon", 5, (0.8, 1.2)),
    ("coffee_maker", "rounded", 0, (0.55, 0.8)),
    ("fan", "star", 4, (0.9, 1.1)),
    ("kettle", "ellipse", 0, (0.85, 1.15)),
    ("lamp", "polygon", 3, (0.7, 1.0)),
    ("mug", "rectangle", 0, (0.8, 1.1)),
    ("sofa", "rounded", 0, (1.6, 2.2)),
    ("stapler", "polygon", 4, (1.8, 2.6)),
    ("table", "polygon", 6, (1.2, 1.6)),
    ("toaster", "star", 6, (0.9, 1.2)),
]
PATTERNS = ("solid", "stripes", "dots", "checker")
MARKS = ("dot", "square", "cross", "triangle")


def random_colour(rng):
    return tuple(int(value) for value in rng.integers(0, 256, 3))


def pale_colour(rng):
    return (np.float32(random_colour(rng)) + 255) / 2


def draw_silhouette(draw, kind, corners, half_width, half_height, centre, rng):
    box = [centre - half_width, centre - half_height, centre + half_width, centre + half_height]
    if kind == "ellipse":
        draw.ellipse(box, fill=255)
    elif kind == "rectangle":
        draw.rectangle(box, fill=255)
    elif kind == "rounded":
        draw.rounded_rectangle(box, radius=rng.uniform(0.15, 0.45) * min(half_width, half_height), fill=255)
    else:
        # Polygons get jittered corners and stars alternate outer and inner points, so products of one super
        # class share a family look without being identical.
        points_count = corners * 2 if kind == "star" else corners
        angles = rng.uniform(0, 2 * np.pi) + 2 * np.pi * np.arange(points_count) / points_count
        angles += rng.uniform(-0.2, 0.2, points_count) * np.pi / points_count
        radii = rng.uniform(0.8, 1.0, points_count)
        if kind == "star":
            radii[1::2] *= rng.uniform(0.35, 0.6)
        draw.polygon([(centre + half_width * r * np.cos(a), centre + half_height * r * np.sin(a))
                      for r, a in zip(radii, angles)], fill=255)


def fill_pattern(canvas_size, rng):
    """Boolean map of where the second product colour shows: a product's stripes, dots or checks."""
    if (pattern := PATTERNS[rng.integers(len(PATTERNS))]) == "solid":
        return np.zeros((canvas_size, canvas_size), bool)
    period = canvas_size * rng.uniform(0.1, 0.3)
    angle = rng.uniform(0, np.pi)
    rows, cols = np.mgrid[0:canvas_size, 0:canvas_size]
    along = (cols * np.cos(angle) + rows * np.sin(angle)) / period
    across = (-cols * np.sin(angle) + rows * np.cos(angle)) / period
    if pattern == "stripes":
        return along % 1 < 0.5
    if pattern == "checker":
        return (np.floor(along) + np.floor(across)) % 2 == 0
    return (along % 1 - 0.5) ** 2 + (across % 1 - 0.5) ** 2 < 0.3 ** 2


def draw_marks(draw, half_width, half_height, centre, rng):
    """A few small glyphs at fixed places on the product: the details that tell two look-alikes apart."""
    colour = random_colour(rng)
    for _ in range(rng.integers(2, 5)):
        x, y = centre + rng.uniform(-0.6, 0.6) * half_width, centre + rng.uniform(-0.6, 0.6) * half_height
        r = centre * rng.uniform(0.07, 0.13)
        mark = MARKS[rng.integers(len(MARKS))]
        if mark == "dot":
            draw.ellipse([x - r, y - r, x + r, y + r], fill=colour)
        elif mark == "square":
            draw.rectangle([x - r, y - r, x + r, y + r], fill=colour)
        elif mark == "cross":
            draw.line([x - r, y, x + r, y], fill=colour, width=max(1, int(r / 2)))
            draw.line([x, y - r, x, y + r], fill=colour, width=max(1, int(r / 2)))
        else:
            draw.polygon([(x, y - r), (x + r, y + r), (x - r, y + r)], fill=colour)


def draw_product(super_class_index, image_size, rng):
    """One product, centred on a square canvas: colour (float32, H x W x 3) and coverage (float32, H x W)."""
    _, kind, corners, aspect_range = SUPER_CLASSES[super_class_index]
    canvas_size = image_size * SUPERSAMPLE
    centre = canvas_size / 2
    aspect = rng.uniform(*aspect_range)
    radius = 0.42 * canvas_size
    half_width, half_height = radius * min(1.0, aspect), radius * min(1.0, 1.0 / aspect)

    silhouette = Image.new("L", (canvas_size, canvas_size), 0)
    draw_silhouette(ImageDraw.Draw(silhouette), kind, corners, half_width, half_height, centre, rng)
    base, second = np.array(random_colour(rng), np.uint8), np.array(random_colour(rng), np.uint8)
    surface = Image.fromarray(np.where(fill_pattern(canvas_size, rng)[..., None], second, base))
    draw_marks(ImageDraw.Draw(surface), half_width, half_height, centre, rng)

    colour = surface.resize((image_size, image_size), Image.BOX)
    coverage = silhouette.resize((image_size, image_size), Image.BOX)
    return np.asarray(colour, np.float32), np.asarray(coverage, np.float32) / 255.0


def draw_background(image_size, rng):
    """Mostly studio white, as on eBay; else a pale colour, a gradient or soft blotches the model must ignore."""
    style = rng.choice(4, p=[0.5, 0.2, 0.15, 0.15])
    if style == 0:
        return np.full((image_size, image_size, 3), rng.uniform(225, 255), np.float32)
    if style == 1:
        return np.broadcast_to(pale_colour(rng), (image_size, image_size, 3)).copy()
    if style == 2:
        angle = rng.uniform(0, 2 * np.pi)
        rows, cols = np.mgrid[0:image_size, 0:image_size] / image_size
        ramp = ((cols * np.cos(angle) + rows * np.sin(angle)) % 1.0)[..., None]
        return (pale_colour(rng) * (1 - ramp) + pale_colour(rng) * ramp).astype(np.float32)
    blotches = rng.uniform(64, 255, (4, 4, 3)).astype(np.float32)
    return cv2.resize(blotches, (image_size, image_size), interpolation=cv2.INTER_CUBIC)


def draw_view(product_colour, product_coverage, rng):
    """One photograph of a product: posed, placed on a background, lit, partly hidden, blurred and noisy."""
    image_size = product_coverage.shape[0]
    pose = cv2.getRotationMatrix2D((image_size / 2, image_size / 2), rng.uniform(-25, 25), rng.uniform(0.75, 1.05))
    pose[:, 2] += rng.uniform(-0.1, 0.1, 2) * image_size
    colour = cv2.warpAffine(product_colour, pose, (image_size, image_size), flags=cv2.INTER_LINEAR)
    coverage = cv2.warpAffine(product_coverage, pose, (image_size, image_size), flags=cv2.INTER_LINEAR)[..., None]
    image = draw_background(image_size, rng) * (1 - coverage) + colour * coverage

    if rng.random() < 0.3:
        height, width = (rng.uniform(0.15, 0.4, 2) * image_size).astype(int)
        top, left = rng.integers(0, image_size - height), rng.integers(0, image_size - width)
        image[top:top + height, left:left + width] = random_colour(rng)

    brightness = rng.uniform(0.75, 1.25) * rng.uniform(0.92, 1.08, 3)
    mean = image.mean()
    image = (image - mean) * rng.uniform(0.75, 1.25) + mean * brightness
    if (blur_sigma := rng.uniform(0, 1.2)) > 0.3:
        image = cv2.GaussianBlur(image, (0, 0), blur_sigma)
    image += rng.normal(0, rng.uniform(1, 6), image.shape).astype(np.float32)
    return np.clip(image + 0.5, 0, 255).astype(np.uint8)


def write_split(root, list_name, product_ids, split_code, min_images, max_images, image_size, seed):
    """Draw and save every view of the split's products and write its list file; returns the image count."""
    lines = [HEADER]
    for class_index, product_id in enumerate(product_ids):
        super_class_index = class_index * len(SUPER_CLASSES) // len(product_ids)  # grouped, like real SOP
        folder = SUPER_CLASSES[super_class_index][0] + "_final"
        os.makedirs(os.path.join(root, folder), exist_ok=True)
        # One generator per product, so a product looks the same whatever else the split contains.
        rng = np.random.default_rng([seed, split_code, class_index])
        product_colour, product_coverage = draw_product(super_class_index, image_size, rng)
        for view in range(rng.integers(min_images, max_images + 1)):
            path = "{}/{}_{}.JPG".format(folder, product_id, view)
            Image.fromarray(draw_view(product_colour, product_coverage, rng)).save(
                os.path.join(root, path), "JPEG", quality=JPEG_QUALITY)
            lines.append("{} {} {} {}".format(len(lines), class_index + 1, super_class_index + 1, path))
    with open(os.path.join(root, list_name), "w") as list_file:
        list_file.write("\n".join(lines) + "\n")
    return len(lines) - 1


def read_marker(out_dir):
    try:
        with open(os.path.join(out_dir, MARKER_NAME)) as marker:
            return json.load(marker)
    except (OSError, ValueError):
        return None


def make_toy_sop(out_dir="data/toy_sop", num_train_classes=300, num_test_classes=300, min_images=4, max_images=8,
                 image_size=80, seed=0, overwrite=False):
    """Write the toy SOP data set into out_dir and return a summary dict (class and image counts, seconds, created).

    Returns at once with created=False if out_dir already holds this data set. Raises FileExistsError if out_dir is
    a non-empty directory this function did not make, or one it made with other arguments and overwrite is False.
    """
    if num_train_classes < 1 or num_test_classes < 1:
        raise ValueError("need at least one train and one test class")
    if not 2 <= min_images <= max_images:
        raise ValueError("need 2 <= min_images <= max_images: retrieval needs a second view of each product")
    if image_size < 16:
        raise ValueError("image_size must be at least 16")
    arguments = dict(num_train_classes=num_train_classes, num_test_classes=num_test_classes, min_images=min_images,
                     max_images=max_images, image_size=image_size, seed=seed, generator_version=GENERATOR_VERSION)
    out_dir = os.path.abspath(out_dir)
    if os.path.exists(out_dir) and (not os.path.isdir(out_dir) or os.listdir(out_dir)):
        marker = read_marker(out_dir)
        if marker is None:
            raise FileExistsError("{} exists and was not made by make_toy_sop.py: not touching it".format(out_dir))
        if marker["arguments"] == arguments:
            return dict(marker["summary"], out_dir=out_dir, seconds=0.0, created=False)
        if not overwrite:
            raise FileExistsError("{} holds a toy SOP made with other arguments {}; pass --overwrite=True to "
                                  "replace it".format(out_dir, marker["arguments"]))

    start = time.time()
    os.makedirs(os.path.dirname(out_dir), exist_ok=True)
    # Everything is written to a hidden sibling and renamed into place at the end: an interrupted run leaves no
    # half data set behind under out_dir.
    partial = tempfile.mkdtemp(prefix="." + os.path.basename(out_dir) + ".partial-", dir=os.path.dirname(out_dir))
    try:
        os.chmod(partial, 0o755)
        product_ids = 100000000000 + np.random.default_rng(seed).choice(
            900000000000, num_train_classes + num_test_classes, replace=False)
        counts = dict(train_classes=num_train_classes, test_classes=num_test_classes)
        counts["train_images"] = write_split(partial, "Ebay_train.txt", product_ids[:num_train_classes], 0,
                                             min_images, max_images, image_size, seed)
        counts["test_images"] = write_split(partial, "Ebay_test.txt", product_ids[num_train_classes:], 1,
                                            min_images, max_images, image_size, seed)
        with open(os.path.join(partial, MARKER_NAME), "w") as marker:
            json.dump(dict(arguments=arguments, summary=counts), marker, sort_keys=True, indent=1)
        replace_into(partial, out_dir)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return dict(counts, out_dir=out_dir, seconds=time.time() - start, created=True)


def replace_into(partial, out_dir):
    """Move the finished data set to out_dir; only an empty directory or our own older data set is replaced."""
    if not os.path.isdir(out_dir):
        os.rename(partial, out_dir)
        return
    if not os.listdir(out_dir):
        os.rmdir(out_dir)
        os.rename(partial, out_dir)
        return
    retired = partial + "-old"
    os.rename(out_dir, retired)
    os.rename(partial, out_dir)
    shutil.rmtree(retired)


def str_to_bool(text):
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    raise argparse.ArgumentTypeError("expected True or False, got {!r}".format(text))


def make_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out_dir", default="data/toy_sop", help="data root to create. Default: %(default)s.")
    parser.add_argument("--num_train_classes", type=int, default=300, help="train products. Default: %(default)s.")
    parser.add_argument("--num_test_classes", type=int, default=300, help="test products. Default: %(default)s.")
    parser.add_argument("--min_images", type=int, default=4, help="fewest views per product. Default: %(default)s.")
    parser.add_argument("--max_images", type=int, default=8, help="most views per product. Default: %(default)s.")
    parser.add_argument("--image_size", type=int, default=80, help="side of the square JPEGs. Default: %(default)s.")
    parser.add_argument("--seed", type=int, default=0, help="random seed. Default: %(default)s.")
    parser.add_argument("--overwrite", type=str_to_bool, default=False,
                        help="replace a toy SOP made here with other arguments. Default: %(default)s.")
    return parser


def main(argv=None):
    parser = make_parser()
    args = parser.parse_args(argv)
    try:
        summary = make_toy_sop(**vars(args))
    except ValueError as error:
        parser.error(str(error))
    except FileExistsError as error:
        print("make_toy_sop.py: error: {}".format(error), file=sys.stderr)
        return 2
    state = "made in {:.1f} s".format(summary["seconds"]) if summary["created"] else "already there, nothing to do"
    print("toy SOP {}: train {} classes / {} images, test {} classes / {} images, {}".format(
        summary["out_dir"], summary["train_classes"], summary["train_images"], summary["test_classes"],
        summary["test_images"], state))
    return 0


if __name__ == "__main__":
    # A plain kill (timeout, CI) then unwinds like Ctrl-C, so the half-written hidden sibling is removed too.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    sys.exit(main())
