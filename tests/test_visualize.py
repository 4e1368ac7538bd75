"""Retrieval pictures: nearest neighbours, the PNG grids and the Recall@K curve, alone and from eval.py --save_vis."""
import math
import os
import shutil

import numpy as np
import paddle
import pytest
from PIL import Image, ImageFont

import eval as eval_script
from core import programs
import reader
from core import visualize

FRAMED = visualize.TILE + 2 * visualize.BORDER
# Five images whose features are unit vectors at these angles (degrees), with these labels.
ANGLES = [0, 10, 35, 65, 110]
LABELS = [1, 1, 2, 2, 3]
COLOURS = [(250, 200, 0), (0, 200, 250), (120, 0, 120), (90, 60, 30), (200, 200, 200)]
# Nearest three of each, worked out from the angles: e.g. 35 degrees is 25 from 10, 30 from 65, 35 from 0.
EXPECTED_NEIGHBOURS = [[1, 2, 3], [0, 2, 3], [1, 3, 0], [2, 4, 1], [3, 2, 1]]


def angle_features(angles):
    radians = np.radians(angles)
    return np.stack([np.cos(radians), np.sin(radians)], axis=1).astype(np.float32)


def chord(degrees):
    """Squared distance between unit vectors `degrees` apart."""
    return 2 - 2 * math.cos(math.radians(degrees))


@pytest.fixture
def coloured_images(tmp_path):
    paths = []
    for i, colour in enumerate(COLOURS):
        paths.append(str(tmp_path / ("image_%d.png" % i)))
        Image.new("RGB", (30 + 10 * i, 40), colour).save(paths[-1])
    return paths


def pixel(image, origin, dx, dy):
    return image.getpixel((origin[0] + dx, origin[1] + dy))


def test_pick_queries_spreads_over_the_list():
    assert list(visualize.pick_queries(100, 5)) == [0, 25, 50, 74, 99]
    assert list(visualize.pick_queries(3, 20)) == [0, 1, 2]


def test_nearest_neighbours_all_against_all_leave_the_query_out():
    features = angle_features(ANGLES) * np.array([[1.0], [3.0], [0.5], [2.0], [1.0]], np.float32)  # norms ignored
    order, distances = visualize.nearest_neighbours(features, features, 3, query_positions=np.arange(5))
    assert order.tolist() == EXPECTED_NEIGHBOURS
    np.testing.assert_allclose(distances[0], [chord(10), chord(35), chord(65)], rtol=1e-5)
    np.testing.assert_allclose(distances[4], [chord(45), chord(75), chord(100)], rtol=1e-5)


def test_nearest_neighbours_in_a_gallery_keep_an_identical_image():
    order, distances = visualize.nearest_neighbours(angle_features([65, 12]), angle_features(ANGLES), 2)
    assert order.tolist() == [[3, 2], [1, 0]]
    np.testing.assert_allclose(distances, [[0, chord(30)], [chord(2), chord(12)]], atol=1e-6)


def test_grid_frames_each_result_by_class_and_shows_its_image(coloured_images, tmp_path):
    written = visualize.save_retrieval_grids(str(tmp_path / "vis"), (3, 32, 32), coloured_images, LABELS,
                                             angle_features(ANGLES), num_queries=5, top_k=3)
    assert written == [str(tmp_path / "vis" / "retrieval_01.png")]
    grid = Image.open(written[0]).convert("RGB")
    # GAP + query + QUERY_GAP + 3 results with gaps across; GAP + 5 rows of tile, caption and gap down
    assert grid.size == (8 + 104 + 24 + 3 * (104 + 8), 8 + 5 * (104 + 16 + 8))
    for row, neighbours in enumerate(EXPECTED_NEIGHBOURS):
        query_origin = (8, 8 + row * 128)
        assert pixel(grid, query_origin, 1, 1) == visualize.QUERY_COLOUR
        assert pixel(grid, query_origin, FRAMED // 2, FRAMED // 2) == COLOURS[row]
        for column, found in enumerate(neighbours):
            origin = (8 + 104 + 24 + column * 112, 8 + row * 128)
            expected = visualize.SAME_CLASS_COLOUR if LABELS[found] == LABELS[row] else visualize.OTHER_CLASS_COLOUR
            for dx, dy in ((1, 1), (FRAMED - 2, FRAMED // 2), (FRAMED // 2, FRAMED - 2)):  # frame: corner, sides
                assert pixel(grid, origin, dx, dy) == expected, (row, column)
            assert pixel(grid, origin, FRAMED // 2, FRAMED // 2) == COLOURS[found]
            caption = np.asarray(grid.crop((origin[0], origin[1] + FRAMED, origin[0] + FRAMED,
                                            origin[1] + FRAMED + visualize.CAPTION)))
            assert (caption.sum(axis=2) < 200).any(), "a distance is written under each result"


def test_more_queries_than_fit_make_more_grids(coloured_images, tmp_path, monkeypatch):
    monkeypatch.setattr(visualize, "ROWS_PER_GRID", 2)
    written = visualize.save_retrieval_grids(str(tmp_path), (3, 32, 32), coloured_images, LABELS,
                                             angle_features(ANGLES), 5, 2)
    assert [os.path.basename(path) for path in written] == ["retrieval_01.png", "retrieval_02.png",
                                                            "retrieval_03.png"]
    heights = [Image.open(path).size[1] for path in written]
    assert heights == [8 + 2 * 128, 8 + 2 * 128, 8 + 128]


def test_text_is_drawn_large_enough_for_its_spaces_to_show():
    font = ImageFont.load_default(visualize.FONT_SIZE)
    assert font.getlength(" ") >= 3 and font.getlength("Recall@K of") >= font.getlength("Recall@Kof") + 3


def test_curve_ks_are_spread_on_a_log_axis():
    assert visualize.curve_ks(1000) == [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000]
    assert visualize.curve_ks(37) == [1, 2, 5, 10, 20, 37]


def test_recall_curve_puts_each_k_on_a_log_axis(tmp_path):
    curve = {1: 0.25, 2: 0.4, 5: 0.5, 10: 0.6, 20: 0.8, 50: 0.9, 100: 1.0}
    path = visualize.save_recall_curve(str(tmp_path / "curve.png"), curve, "Recall@K of 7 queries")
    image = Image.open(path).convert("RGB")
    assert image.size == visualize.CURVE_SIZE == (640, 400)
    plot_width, plot_height = 610 - 70, 340 - 40
    assert visualize.curve_point(1, 0.25, 100) == (70, round(340 - 0.25 * plot_height))
    assert visualize.curve_point(10, 0.6, 100) == (70 + plot_width // 2, 340 - 0.6 * plot_height)  # half-way
    assert visualize.curve_point(100, 1.0, 100) == (610, 40)
    for k, recall in curve.items():
        assert image.getpixel(visualize.curve_point(k, recall, 100)) == visualize.CURVE_COLOUR
    assert image.getpixel(visualize.curve_point(10, 0.1, 100)) != visualize.CURVE_COLOUR


# eval.py --save_vis, end to end --------------------------------------------------------------------------------------

TINY = ["--model=ResNet18", "--image_shape=3,32,32", "--use_gpu=False", "--num_workers=0", "--embedding_size=8",
        "--batch_size=8"]


@pytest.fixture(scope="module")
def toy_root(toy_root, tmp_path_factory):
    """A copy of the toy data set, plus a query list (each test class's first image) and a gallery list (the
    others)."""
    root = shutil.copytree(toy_root, str(tmp_path_factory.mktemp("toy") / "toy_sop"))
    lines = open(os.path.join(root, reader.TEST_LIST)).read().splitlines()
    seen, query, gallery = set(), [lines[0]], [lines[0]]
    for line in lines[1:]:
        class_id = line.split()[1]
        (gallery if class_id in seen else query).append(line)
        seen.add(class_id)
    for name, listed in (("query.txt", query), ("gallery.txt", gallery)):
        with open(os.path.join(root, name), "w") as list_file:
            list_file.write("\n".join(listed) + "\n")
    return root


@pytest.fixture(scope="module")
def random_weights(tmp_path_factory):
    """Untrained ResNet18 weights in a .pdparams file, so eval and the test extract the very same features."""
    paddle.enable_static()
    paddle.seed(5)
    feature_program = programs.build_feature_program("ResNet18", 8, (3, 32, 32))
    executor = paddle.static.Executor(paddle.CPUPlace())
    executor.run(feature_program.startup)
    prefix = str(tmp_path_factory.mktemp("weights") / "untrained")
    paddle.static.save(feature_program.program, prefix)
    return prefix + ".pdparams"


def features_of(flags, root, list_name):
    args = eval_script.make_parser().parse_args(flags)
    executor, feature_program = programs.load_feature_program(args, log=lambda message: None)
    features, labels = programs.extract_features(
        executor, feature_program,
        reader.eval_batches(reader.read_list(root, list_name), 8, (3, 32, 32), num_workers=0))
    return features, labels.ravel()


def test_eval_draws_the_gallery_results_of_spread_queries(toy_root, random_weights, tmp_path, capsys):
    flags = TINY + ["--data_dir=%s" % toy_root, "--pretrained_model=%s" % random_weights]
    vis_dir = str(tmp_path / "vis")
    results = eval_script.main(flags + ["--recall_k=1,2", "--query_list=query.txt", "--gallery_list=gallery.txt",
                                        "--save_vis=%s" % vis_dir, "--vis_queries=5", "--vis_top_k=4"])
    capsys.readouterr()
    query_features, query_labels = features_of(flags, toy_root, "query.txt")
    gallery_features, gallery_labels = features_of(flags, toy_root, "gallery.txt")
    assert len(query_labels) == 8 and len(gallery_labels) > 16
    distances = ((query_features[:, None] / np.linalg.norm(query_features, axis=1)[:, None, None]
                  - gallery_features[None] / np.linalg.norm(gallery_features, axis=1)[None, :, None]) ** 2).sum(-1)
    nearest = np.argsort(distances, axis=1)
    for k in (1, 2):
        found = (gallery_labels[nearest[:, :k]] == query_labels[:, None]).any(axis=1)
        assert results["recall@%d" % k] == pytest.approx(found.mean())
    assert sorted(results) == ["map@r", "num_no_positive", "num_queries", "r_precision", "recall@1", "recall@2"]

    grid = Image.open(os.path.join(vis_dir, "retrieval_01.png")).convert("RGB")
    assert grid.size == visualize.grid_size(5, 4)
    for row, query in enumerate([0, 2, 4, 5, 7]):  # 5 of 8 queries, spread evenly
        for column in range(4):
            same_class = gallery_labels[nearest[query, column]] == query_labels[query]
            expected = visualize.SAME_CLASS_COLOUR if same_class else visualize.OTHER_CLASS_COLOUR
            assert pixel(grid, visualize.tile_origin(row, column + 1), 1, 1) == expected, (row, column)

    curve = Image.open(os.path.join(vis_dir, "recall_at_k.png")).convert("RGB")
    assert curve.size == (640, 400)
    max_k = len(gallery_labels)
    for k in (1, 2, max_k):
        recall = (gallery_labels[nearest[:, :k]] == query_labels[:, None]).any(axis=1).mean()
        assert curve.getpixel(visualize.curve_point(k, recall, max_k)) == visualize.CURVE_COLOUR


def test_eval_all_against_all_never_shows_a_query_as_its_own_result(toy_root, random_weights, tmp_path, capsys):
    vis_dir = str(tmp_path / "vis")
    eval_script.main(TINY + ["--data_dir=%s" % toy_root, "--pretrained_model=%s" % random_weights,
                             "--save_vis=%s" % vis_dir, "--vis_queries=12", "--vis_top_k=3"])
    assert "retrieval_01.png, %s" % os.path.join(vis_dir, "retrieval_02.png") in capsys.readouterr().out
    first, second = (Image.open(os.path.join(vis_dir, name)).convert("RGB")
                     for name in ("retrieval_01.png", "retrieval_02.png"))
    assert first.size == visualize.grid_size(10, 3) and second.size == visualize.grid_size(2, 3)
    for grid, rows in ((first, 10), (second, 2)):
        for row in range(rows):
            query_tile = np.asarray(grid.crop(tile_box(visualize.tile_origin(row, 0))), dtype=np.int64)
            nearest_tile = np.asarray(grid.crop(tile_box(visualize.tile_origin(row, 1))), dtype=np.int64)
            assert np.abs(query_tile - nearest_tile).mean() > 3, "the nearest result is another image"


def tile_box(origin):
    inner = origin[0] + visualize.BORDER, origin[1] + visualize.BORDER
    return inner[0], inner[1], inner[0] + visualize.TILE, inner[1] + visualize.TILE
