"""One image from file to network input: the original suite's test-time pixels, its training crop, normalisation."""
import math

import cv2
import numpy as np
import pytest
from PIL import Image

from core import image_ops

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


# ---------------------------------------------------------------- the original's imgtool.py, transcribed

def original_resize_short(img, target_size):
    percent = float(target_size) / min(img.shape[0], img.shape[1])
    resized_width = int(round(img.shape[1] * percent))
    resized_height = int(round(img.shape[0] * percent))
    return cv2.resize(img, (resized_width, resized_height), interpolation=cv2.INTER_LANCZOS4)


def original_crop_image(img, target_size):
    height, width = img.shape[:2]
    w_start = (width - target_size) // 2
    h_start = (height - target_size) // 2
    return img[h_start:h_start + target_size, w_start:w_start + target_size, :]


def original_test_pixels(path, crop_size):
    """process_image(mode='test') up to the RGB pixels: cv2.imread (BGR), resize_short, crop_image, BGR → RGB."""
    img = cv2.imread(path)
    img = original_resize_short(img, crop_size)
    img = original_crop_image(img, crop_size)
    return img[:, :, ::-1]


def original_normalise(rgb):
    img = rgb.astype("float32").transpose((2, 0, 1)) / 255
    img -= np.array(MEAN).reshape((3, 1, 1))
    img /= np.array(STD).reshape((3, 1, 1))
    return img


def photo_like(width, height, seed):
    """Smooth colour fields, edges and noise: something JPEG, resizing and cropping all change."""
    y, x = np.mgrid[0:height, 0:width]
    rng = np.random.default_rng(seed)
    channels = [128 + 90 * np.sin(x / (7.0 + 3 * c) + c) * np.cos(y / (11.0 + c)) for c in range(3)]
    pixels = np.stack(channels, axis=-1) + rng.normal(0, 12, (height, width, 3))
    pixels[:, width // 3:width // 3 + 2] = 255
    return np.clip(pixels, 0, 255).astype(np.uint8)


# (width, height): landscape, portrait, square, smaller than the crop, and 101×64, whose resized width 50.5 is where
# Python's round (to even: 50) and rounding half up (51) part.
SIZES = [(500, 333), (333, 500), (224, 224), (20, 30), (101, 64), (640, 97)]


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("crop_size", [32, 224])
def test_test_image_is_the_originals_pixels(tmp_path, size, crop_size):
    path = str(tmp_path / "photo.jpg")
    Image.fromarray(photo_like(*size, seed=size[0])).save(path, quality=90)
    expected = original_test_pixels(path, crop_size)
    ours = image_ops.test_crop(image_ops.load_rgb(path), crop_size, crop_size)
    assert ours.shape == expected.shape == (crop_size, crop_size, 3)
    assert np.abs(ours.astype(int) - expected.astype(int)).max() <= 2  # within 2/255 before normalisation
    normalised = image_ops.test_image(path, (3, crop_size, crop_size))
    assert normalised.dtype == np.float32
    np.testing.assert_allclose(normalised, original_normalise(expected), atol=2 / 255 / min(STD))


def test_an_exif_rotated_photo_is_read_upright_as_cv2_reads_it(tmp_path):
    path = str(tmp_path / "rotated.jpg")
    image = Image.fromarray(photo_like(300, 200, seed=3))
    exif = image.getexif()
    exif[0x0112] = 6  # the camera was turned: show the stored pixels rotated by 90 degrees
    image.save(path, quality=90, exif=exif)
    assert image_ops.load_rgb(path).shape == (300, 200, 3) == cv2.imread(path).shape
    np.testing.assert_array_equal(image_ops.load_rgb(path), cv2.imread(path)[:, :, ::-1])
    ours = image_ops.test_crop(image_ops.load_rgb(path), 64, 64)
    assert np.abs(ours.astype(int) - original_test_pixels(path, 64).astype(int)).max() <= 2


def test_a_non_square_crop_keeps_the_whole_short_side_of_its_larger_side(tmp_path):
    pixels = photo_like(300, 200, seed=4)
    crop = image_ops.test_crop(pixels, 48, 64)
    assert crop.shape == (48, 64, 3)
    resized = original_resize_short(pixels, 64)  # the short side goes to the larger crop side
    top, left = (resized.shape[0] - 48) // 2, (resized.shape[1] - 64) // 2
    np.testing.assert_array_equal(crop, resized[top:top + 48, left:left + 64])


def test_normalisation_of_a_flat_colour_is_exact():
    pixels = np.full((30, 50, 3), (200, 100, 50), np.uint8)
    normalised = np.empty((3, 16, 16), np.float32)
    image_ops.normalize(image_ops.test_crop(pixels, 16, 16), normalised)
    expected = (np.array([200, 100, 50]) / 255.0 - MEAN) / STD
    np.testing.assert_allclose(normalised.mean(axis=(1, 2)), expected, rtol=1e-5)
    np.testing.assert_allclose(normalised.std(axis=(1, 2)), 0, atol=1e-5)


# ---------------------------------------------------------------- decoding

def test_load_rgb_gives_rgb_arrays_of_any_mode(tmp_path):
    Image.new("RGB", (4, 3), (1, 2, 3)).save(tmp_path / "rgb.png")
    rgb = image_ops.load_rgb(str(tmp_path / "rgb.png"))
    assert rgb.shape == (3, 4, 3) and rgb.dtype == np.uint8 and tuple(rgb[2, 3]) == (1, 2, 3)
    Image.new("L", (4, 4), 7).save(tmp_path / "gray.png")
    assert (image_ops.load_rgb(str(tmp_path / "gray.png")) == 7).all()


# ---------------------------------------------------------------- training augmentation

def resize_calls(monkeypatch):
    """Records the interpolation of every cv2.resize the image operations make."""
    calls, resize = [], cv2.resize

    def recording_resize(pixels, size, interpolation=None):
        calls.append((pixels.shape[:2], size, interpolation))
        return resize(pixels, size, interpolation=interpolation)

    monkeypatch.setattr(image_ops.cv2, "resize", recording_resize)
    return calls


@pytest.mark.parametrize("size", [(300, 200), (64, 64), (20, 90), (1, 1)])
def test_random_resized_crop_area_stays_in_range_and_resizes_with_lanczos(monkeypatch, size):
    calls = resize_calls(monkeypatch)
    rng = np.random.default_rng(0)
    pixels = np.zeros((size[1], size[0], 3), np.uint8)
    for _ in range(200):
        assert image_ops.random_resized_crop(pixels, 24, 32, 0.25, rng).shape == (24, 32, 3)
    areas = [crop_h * crop_w / (size[0] * size[1]) for (crop_h, crop_w), _, _ in calls]
    assert {interpolation for _, _, interpolation in calls} == {cv2.INTER_LANCZOS4}
    assert {target for _, target, _ in calls} == {(32, 24)}
    assert max(areas) <= 1.0 + 1e-9
    if size in ((300, 200), (64, 64)):  # the area range only shrinks below 0.25 for very elongated images
        assert min(areas) >= 0.2 and max(areas) > 0.8


def test_random_resized_crop_draws_the_originals_shapes(monkeypatch):
    """Aspect ratios between 3/4 and 4/3 drawn on a square-root scale, crop sides truncated, as the original's."""
    rng = np.random.default_rng(1)
    pixels = np.zeros((400, 400, 3), np.uint8)
    calls = resize_calls(monkeypatch)
    for _ in range(300):
        image_ops.random_resized_crop(pixels, 8, 8, 0.08, rng)
    shapes = [crop_shape for crop_shape, _, _ in calls]
    ratios = np.array([width / height for height, width in shapes])
    assert ratios.min() >= 3 / 4 - 0.05 and ratios.max() <= 4 / 3 + 0.05
    assert math.isclose(np.median(np.log(ratios)), 0, abs_tol=0.05)


def test_train_image_output_and_flip():
    pixels = np.zeros((32, 32, 3), dtype=np.uint8)
    pixels[:, :16] = 255
    augmentation = image_ops.Augmentation(crop_scale_min=1.0, random_flip=True, rotate=False)
    left_bright = []
    for seed in range(40):
        out = np.empty((3, 24, 24), dtype=np.float32)
        image_ops.train_image(pixels, out, augmentation, np.random.default_rng(seed))
        assert np.isfinite(out).all()
        left_bright.append(out[0, :, :4].mean() > out[0, :, -4:].mean())
    assert 5 < sum(left_bright) < 35  # flipped about half the time


def test_rotation_turns_about_the_centre_as_cv2_does():
    pixels = np.tile(np.arange(64, dtype=np.uint8) * 4, (64, 1))[:, :, None].repeat(3, 2)
    plain = np.empty((3, 32, 32), dtype=np.float32)
    rotated = np.empty((3, 32, 32), dtype=np.float32)
    unrotated = image_ops.Augmentation(crop_scale_min=1.0, random_flip=False, rotate=False)
    image_ops.train_image(pixels, plain, unrotated, np.random.default_rng(5))
    image_ops.train_image(pixels, rotated, unrotated._replace(rotate=True), np.random.default_rng(5))
    assert not np.allclose(plain, rotated)
    matrix = cv2.getRotationMatrix2D((32, 32), 10, 1.0)
    np.testing.assert_array_equal(image_ops.rotate(pixels, 10), cv2.warpAffine(pixels, matrix, (64, 64)))
