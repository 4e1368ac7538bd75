"""Decoding and augmentation of one image into a normalised CHW float32 array.

Train: optional rotation (±10°), random-resized crop, horizontal flip. Test: resize the short side, centre crop.
Both end in RGB scaled to [0, 1], minus the ImageNet mean, divided by its std, as the original suite did.
Randomness comes only from the `rng` argument, so a batch decodes identically whichever worker gets it.
"""
import collections
import math

import numpy as np
from PIL import Image

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32).reshape(3, 1, 1)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32).reshape(3, 1, 1)
ASPECT_RATIO_RANGE = (3.0 / 4.0, 4.0 / 3.0)
MAX_ROTATION_DEGREES = 10
# The original evaluated 224-px crops from images whose short side was resized to 256.
TEST_RESIZE_RATIO = 256.0 / 224.0


# Training augmentation, built once from --crop_scale_min, --random_flip and --rotate.
Augmentation = collections.namedtuple("Augmentation", "crop_scale_min random_flip rotate")


class BadImageError(Exception):
    """An image file that is missing, not a file, or cannot be decoded."""

    def __init__(self, path, reason):
        super().__init__("%s: %s" % (path, reason))
        self.path = path


def load_rgb(path):
    """Opens `path` fully decoded as an 8-bit RGB PIL image; raises BadImageError naming the file."""
    try:
        # Opened through our own file object: leaving the block closes the file only. `with Image.open(path)` would
        # also free the pixels of the image it returns when to_rgb hands back the same (already RGB) image.
        with open(path, "rb") as file:
            image = Image.open(file)
            image.load()
        return to_rgb(image)
    except Exception as error:  # malformed files make PIL raise OSError, ValueError, SyntaxError, struct.error, ...
        raise BadImageError(path, "%s: %s" % (type(error).__name__, error)) from None


def to_rgb(image):
    """Converts any PIL mode to RGB without the surprises of a bare `convert('RGB')`.

    16-bit grayscale would be clipped at 255 (almost all white), so it is scaled down; transparent pixels have
    arbitrary colours under them, so images with alpha are composited onto white.
    """
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        pixels = np.asarray(image, dtype=np.float64)
        # "I;16" is 16-bit whatever its values (a dark image must stay dark); "I" (32-bit) holds 16-bit samples from
        # some formats and 8-bit ones from others, so there only the values can tell.
        peak = 65535.0 if image.mode != "I" or pixels.max() > 255 else 255.0
        image = Image.fromarray(np.round(pixels * (255.0 / peak)).astype(np.uint8), mode="L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))
    return image if image.mode == "RGB" else image.convert("RGB")


def random_resized_crop(image, height, width, scale_min, rng):
    """Crops a random area fraction in [scale_min, 1] with aspect ratio in [3/4, 4/3], then resizes.

    As the original: the aspect ratio is drawn first and the area range is shrunk so the crop always fits,
    so there is no retry loop and no fallback crop.
    """
    image_w, image_h = image.size
    aspect = math.sqrt(rng.uniform(*ASPECT_RATIO_RANGE))
    unit_w, unit_h = aspect, 1.0 / aspect
    fits = min((image_w / image_h) / unit_w ** 2, (image_h / image_w) / unit_h ** 2)
    area_fraction = rng.uniform(min(scale_min, fits), min(1.0, fits))
    side = math.sqrt(image_w * image_h * area_fraction)
    crop_w = min(image_w, max(1, int(side * unit_w)))
    crop_h = min(image_h, max(1, int(side * unit_h)))
    left = int(rng.integers(0, image_w - crop_w + 1))
    top = int(rng.integers(0, image_h - crop_h + 1))
    image = image.crop((left, top, left + crop_w, top + crop_h))
    return image.resize((width, height), Image.BILINEAR)


def resize_short_center_crop(image, height, width):
    """Resizes the short side to TEST_RESIZE_RATIO times the crop, then takes the centre crop.

    Only the source region under the crop is resampled (PIL's `box`): the same pixels as resizing the whole image and
    cropping, without computing the rows and columns the crop throws away.
    """
    target_short = int(round(max(height, width) * TEST_RESIZE_RATIO))
    image_w, image_h = image.size
    scale = target_short / min(image_w, image_h)
    new_w = max(width, int(round(image_w * scale)))
    new_h = max(height, int(round(image_h * scale)))
    left = (new_w - width) // 2
    top = (new_h - height) // 2
    scale_w, scale_h = new_w / image_w, new_h / image_h
    box = (left / scale_w, top / scale_h, (left + width) / scale_w, (top + height) / scale_h)
    return image.resize((width, height), Image.BILINEAR, box=box)


def normalize(image, out):
    """Writes the RGB image into `out` (3×H×W float32) scaled to [0, 1] and standardised."""
    pixels = np.asarray(image, dtype=np.float32).transpose(2, 0, 1)
    np.multiply(pixels, 1.0 / 255.0, out=out)
    out -= IMAGENET_MEAN
    out /= IMAGENET_STD


def process_train_image(image, out, augmentation, rng):
    """Augments one decoded training image into `out` as `augmentation` says."""
    _, height, width = out.shape
    if augmentation.rotate:
        angle = int(rng.integers(-MAX_ROTATION_DEGREES, MAX_ROTATION_DEGREES + 1))
        image = image.rotate(angle, resample=Image.BILINEAR)
    image = random_resized_crop(image, height, width, augmentation.crop_scale_min, rng)
    if augmentation.random_flip and rng.integers(0, 2) == 1:
        image = image.transpose(Image.FLIP_LEFT_RIGHT)
    normalize(image, out)


def process_test_image(image, out):
    """Resizes and centre-crops one decoded image into `out`, with no randomness."""
    _, height, width = out.shape
    normalize(resize_short_center_crop(image, height, width), out)
