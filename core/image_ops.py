"""From an image file to a normalised CHW float32 array, with the original suite's pixels (its imgtool.py).

Decoding gives the pixels `cv2.imread` gives (the same JPEG decoder, EXIF orientation applied, RGB order), except
where OpenCV reads an image wrongly: 16-bit samples are scaled to 8 bits, transparent pixels are composited onto
white, palette and CMYK images are converted by PIL. Resizing is OpenCV's Lanczos (`cv2.INTER_LANCZOS4`), as the
original's.

Test (`test_image`): the short side resized to the crop size, then the centre crop, so the whole short side is kept.
Train (`train_image`): optional rotation (±10°), a random-resized crop, a horizontal flip. Both end in RGB scaled to
[0, 1], minus the ImageNet mean, divided by its std. Randomness comes only from the `rng` argument, so a batch decodes
identically whichever worker gets it.
"""
import collections
import math

import cv2
import numpy as np
from PIL import Image, ImageOps

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32).reshape(3, 1, 1)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32).reshape(3, 1, 1)
ASPECT_RATIO_RANGE = (3.0 / 4.0, 4.0 / 3.0)
MAX_ROTATION_DEGREES = 10
# File names taken for images where a folder is read (infer.py and search.py --image_dir, data/prepare_folder.py).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")

# Training augmentation, built once from --crop_scale_min, --random_flip and --rotate.
Augmentation = collections.namedtuple("Augmentation", "crop_scale_min random_flip rotate")


class BadImageError(Exception):
    """An image file that is missing, not a file, or cannot be decoded."""

    def __init__(self, path, reason):
        super().__init__("%s: %s" % (path, reason))
        self.path = path


def is_image_name(path):
    return path.lower().endswith(IMAGE_EXTENSIONS)


def load_rgb(path):
    """Decodes `path` into an H×W×3 uint8 RGB array, upright as its EXIF orientation says; raises BadImageError
    naming the file."""
    try:
        with open(path, "rb") as file:
            image = Image.open(file)
            image.load()
            # cv2.imread turns an image upright by its EXIF orientation tag; so does this.
            ImageOps.exif_transpose(image, in_place=True)
        return np.asarray(to_rgb(image))
    except Exception as error:  # malformed files make PIL raise OSError, ValueError, SyntaxError, struct.error, ...
        raise BadImageError(path, "%s: %s" % (type(error).__name__, error)) from None


def to_rgb(image):
    """Converts any PIL mode to RGB without the surprises of a bare `convert('RGB')` (or of cv2.imread).

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


def resize(pixels, width, height):
    """Lanczos resampling over 8×8 neighbourhoods, as the original's every resize."""
    return cv2.resize(pixels, (width, height), interpolation=cv2.INTER_LANCZOS4)


def resize_short(pixels, target_size):
    """Scales the short side to `target_size`, the long side by the same factor, rounded as the original rounds."""
    image_h, image_w = pixels.shape[:2]
    percent = float(target_size) / min(image_h, image_w)
    return resize(pixels, int(round(image_w * percent)), int(round(image_h * percent)))


def center_crop(pixels, height, width):
    """The centre `height`×`width` of the image; an odd margin leaves its extra pixel at the bottom and right."""
    image_h, image_w = pixels.shape[:2]
    top, left = (image_h - height) // 2, (image_w - width) // 2
    return pixels[top:top + height, left:left + width]


def test_crop(pixels, height, width):
    """The original's test-time crop: the short side resized to the crop size, the centre kept.

    The original's crops are square; for a height×width crop the short side goes to the larger of the two, so the
    crop fits and a square crop is exactly the original's.
    """
    return center_crop(resize_short(pixels, max(height, width)), height, width)


def normalize(pixels, out):
    """Writes the H×W×3 RGB uint8 image into `out` (3×H×W float32) scaled to [0, 1] and standardised."""
    np.multiply(pixels.transpose(2, 0, 1), np.float32(1.0 / 255.0), out=out)
    out -= IMAGENET_MEAN
    out /= IMAGENET_STD


def test_image(path, image_shape, out=None):
    """The whole test-time path of eval.py, infer.py, the periodic test and the pictures: the file at `path` as the
    network's input, a normalised C×H×W float32 array of `image_shape` (written into `out` when given)."""
    _, height, width = image_shape
    out = np.empty(tuple(image_shape), np.float32) if out is None else out
    normalize(test_crop(load_rgb(path), height, width), out)
    return out


def displayable(image):
    """A normalised C×H×W array back to H×W×3 uint8 RGB pixels: what the network saw, for pictures."""
    return np.clip(np.round((image * IMAGENET_STD + IMAGENET_MEAN) * 255.0), 0, 255).astype(np.uint8).transpose(1, 2, 0)


def rotate(pixels, angle):
    """Rotates by `angle` degrees counter-clockwise about the centre, keeping the size, black outside (cv2's)."""
    image_h, image_w = pixels.shape[:2]
    matrix = cv2.getRotationMatrix2D((image_w // 2, image_h // 2), angle, 1.0)
    return cv2.warpAffine(pixels, matrix, (image_w, image_h))


def random_resized_crop(pixels, height, width, scale_min, rng):
    """Crops a random area fraction in [scale_min, 1] with aspect ratio in [3/4, 4/3], then resizes.

    As the original: the aspect ratio is drawn first and the area range is shrunk so the crop always fits,
    so there is no retry loop and no fallback crop.
    """
    image_h, image_w = pixels.shape[:2]
    aspect = math.sqrt(rng.uniform(*ASPECT_RATIO_RANGE))
    unit_w, unit_h = aspect, 1.0 / aspect
    fits = min((image_w / image_h) / unit_w ** 2, (image_h / image_w) / unit_h ** 2)
    area_fraction = rng.uniform(min(scale_min, fits), min(1.0, fits))
    side = math.sqrt(image_w * image_h * area_fraction)
    crop_w = min(image_w, max(1, int(side * unit_w)))
    crop_h = min(image_h, max(1, int(side * unit_h)))
    top = int(rng.integers(0, image_h - crop_h + 1))
    left = int(rng.integers(0, image_w - crop_w + 1))
    return resize(pixels[top:top + crop_h, left:left + crop_w], width, height)


def train_image(pixels, out, augmentation, rng):
    """Augments one decoded training image (H×W×3 uint8 RGB) into `out` as `augmentation` says."""
    _, height, width = out.shape
    if augmentation.rotate:
        pixels = rotate(pixels, int(rng.integers(-MAX_ROTATION_DEGREES, MAX_ROTATION_DEGREES + 1)))
    pixels = random_resized_crop(pixels, height, width, augmentation.crop_scale_min, rng)
    if augmentation.random_flip and rng.integers(0, 2) == 1:
        pixels = pixels[:, ::-1]
    normalize(pixels, out)
