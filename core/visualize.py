"""Pictures of a retrieval run: grids of queries with their nearest results, and the Recall@K curve, as PNG files.

A grid has one row per query: the query image (blue border), then its top-K results, nearest first, each framed
green when it shows the query's class, red when it does not and grey when a label is unknown (search.py), with its
distance (or search.py's score) written under it. Each tile shows what the network saw: the image's test-time crop
(image_ops.test_image). Distances are
squared Euclidean between L2-normalised features (0 to 4), the distance the original's recall_topk ranked by.
"""
import math
import os

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

import utility
from core import image_ops, metrics

TILE = 96                     # side of the square area an image is fitted into
BORDER = 4                    # frame around each tile, coloured by class agreement
CAPTION = 16                  # text strip under each framed tile
GAP = 8                       # space between framed tiles and around the grid
QUERY_GAP = 24                # extra space between the query and its results
ROWS_PER_GRID = 10            # queries per PNG; more queries make more files
QUERY_COLOUR = (40, 90, 220)
SAME_CLASS_COLOUR = (0, 170, 0)
OTHER_CLASS_COLOUR = (220, 0, 0)
UNKNOWN_CLASS_COLOUR = (150, 150, 150)
BACKGROUND = (255, 255, 255)
TILE_BACKGROUND = (235, 235, 235)
TEXT_COLOUR = (20, 20, 20)

# Pillow's default font at its own 10 px draws a space about a pixel wide ("Recall@Kof 48"): text is drawn larger.
FONT_SIZE = 13
TITLE_FONT_SIZE = 15

CURVE_SIZE = (640, 400)
PLOT_LEFT, PLOT_RIGHT, PLOT_TOP, PLOT_BOTTOM = 70, 610, 40, 340  # the plotting area inside the curve image
CURVE_COLOUR = (31, 119, 180)
GRID_COLOUR = (220, 220, 220)
AXIS_COLOUR = (60, 60, 60)
MARKER_RADIUS = 4


def pick_queries(num_queries, count):
    """`count` query positions spread evenly over the list, so the picture covers its whole range of classes."""
    count = min(count, num_queries)
    return np.unique(np.linspace(0, num_queries - 1, count).round().astype(np.int64))


def nearest_neighbours(query_features, gallery_features, top_k, query_positions=None):
    """The `top_k` nearest gallery rows of each query, nearest first, and their distances.

    query_positions: each query's own row in the gallery when queries and gallery are the same images
    (all-vs-all), so a query does not find itself; None for a separate gallery.
    """
    queries = metrics.l2_normalize(query_features)
    gallery = metrics.l2_normalize(gallery_features)
    squared_norms = np.einsum("ij,ij->i", gallery, gallery)
    distances = (np.einsum("ij,ij->i", queries, queries)[:, None] + squared_norms[None, :]
                 - 2 * queries @ gallery.T)
    np.maximum(distances, 0, out=distances)
    if query_positions is not None:
        distances[np.arange(len(queries)), query_positions] = np.inf
    top_k = min(top_k, gallery.shape[0] - (query_positions is not None))
    order = np.argsort(distances, axis=1, kind="stable")[:, :top_k]
    return order, np.take_along_axis(distances, order, axis=1)


def grid_size(num_rows, top_k):
    """Width and height in pixels of a grid of `num_rows` queries with `top_k` results each."""
    framed = TILE + 2 * BORDER
    width = GAP + framed + QUERY_GAP + top_k * (framed + GAP)
    height = GAP + num_rows * (framed + CAPTION + GAP)
    return width, height


def tile_origin(row, column):
    """Top-left corner of the framed tile at `column` (0: the query) of `row`."""
    framed = TILE + 2 * BORDER
    x = GAP if column == 0 else GAP + framed + QUERY_GAP + (column - 1) * (framed + GAP)
    return x, GAP + row * (framed + CAPTION + GAP)


def _fitted_image(path, image_shape):
    """The network's input for `path` (the test-time crop), scaled to fit a tile."""
    pixels = image_ops.displayable(image_ops.test_image(path, image_shape))
    return ImageOps.contain(Image.fromarray(pixels), (TILE, TILE))


def _draw_tile(canvas, draw, font, origin, path, image_shape, frame_colour, caption):
    x, y = origin
    framed = TILE + 2 * BORDER
    draw.rectangle([x, y, x + framed - 1, y + framed - 1], fill=frame_colour)
    draw.rectangle([x + BORDER, y + BORDER, x + BORDER + TILE - 1, y + BORDER + TILE - 1], fill=TILE_BACKGROUND)
    image = _fitted_image(path, image_shape)
    canvas.paste(image, (x + BORDER + (TILE - image.width) // 2, y + BORDER + (TILE - image.height) // 2))
    text_width = draw.textlength(caption, font=font)
    draw.text((x + (framed - text_width) / 2, y + framed + 2), caption, fill=TEXT_COLOUR, font=font)


def render_grid(rows, top_k, image_shape):
    """One grid image; `rows` holds (query_path, [(result_path, same_class, caption value), ...]) per query; each
    tile shows the network's input, the test-time crop of `image_shape`.

    same_class is None where a label is unknown (grey frame); the caption value is a distance or a score.
    """
    canvas = Image.new("RGB", grid_size(len(rows), top_k), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(FONT_SIZE)
    for row, (query_path, results) in enumerate(rows):
        _draw_tile(canvas, draw, font, tile_origin(row, 0), query_path, image_shape, QUERY_COLOUR, "query")
        for column, (path, same_class, distance) in enumerate(results, start=1):
            colour = (UNKNOWN_CLASS_COLOUR if same_class is None
                      else SAME_CLASS_COLOUR if same_class else OTHER_CLASS_COLOUR)
            _draw_tile(canvas, draw, font, tile_origin(row, column), path, image_shape, colour, "%.3f" % distance)
    return canvas


def save_retrieval_grids(out_dir, image_shape, query_paths, query_labels, query_features, num_queries, top_k,
                         gallery_paths=None, gallery_labels=None, gallery_features=None):
    """Writes `retrieval_01.png`, ... to `out_dir` for `num_queries` queries spread over the query list.

    Without a gallery, each query searches all the other query images. Returns the paths written.
    """
    all_vs_all = gallery_features is None
    if all_vs_all:
        gallery_paths, gallery_labels, gallery_features = query_paths, query_labels, query_features
    chosen = pick_queries(len(query_paths), num_queries)
    neighbours, distances = nearest_neighbours(np.asarray(query_features)[chosen], gallery_features, top_k,
                                               chosen if all_vs_all else None)
    query_labels, gallery_labels = np.asarray(query_labels).ravel(), np.asarray(gallery_labels).ravel()
    rows = [(query_paths[query], [(gallery_paths[found], gallery_labels[found] == query_labels[query], distance)
                                  for found, distance in zip(neighbours[row], distances[row])])
            for row, query in enumerate(chosen)]
    written = []
    for page, start in enumerate(range(0, len(rows), ROWS_PER_GRID), start=1):
        written.append(save_png(os.path.join(out_dir, "retrieval_%02d.png" % page),
                                render_grid(rows[start:start + ROWS_PER_GRID], neighbours.shape[1], image_shape)))
    return written


def save_png(path, image):
    """Writes `image` to `path` complete or not at all (utility.atomic_output); returns `path`."""
    with utility.atomic_output(path, "wb") as png_file:
        image.save(png_file, format="PNG")
    return path


def curve_ks(max_k):
    """K = 1, 2, 5, 10, 20, 50, ... up to `max_k` (and `max_k` itself): evenly spread on a log axis."""
    ks = [step * 10 ** decade for decade in range(int(math.log10(max(max_k, 1))) + 1) for step in (1, 2, 5)]
    return sorted({k for k in ks if k <= max_k} | {max(max_k, 1)})


def curve_point(k, recall, max_k):
    """Pixel position of (K, Recall@K) in the curve image: log10 K across, recall 0 to 1 upwards."""
    span = math.log10(max_k) if max_k > 1 else 1.0
    x = PLOT_LEFT + (PLOT_RIGHT - PLOT_LEFT) * math.log10(k) / span
    y = PLOT_BOTTOM - (PLOT_BOTTOM - PLOT_TOP) * recall
    return round(x), round(y)


def save_recall_curve(path, recall_at_k, title):
    """Draws Recall@K against K on a log axis; `recall_at_k` maps each K to its recall."""
    ks = sorted(recall_at_k)
    max_k = ks[-1]
    canvas = Image.new("RGB", CURVE_SIZE, BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(FONT_SIZE)
    for tenth in range(0, 11, 2):
        _, y = curve_point(1, tenth / 10, max_k)
        draw.line([PLOT_LEFT, y, PLOT_RIGHT, y], fill=GRID_COLOUR)
        draw.text((PLOT_LEFT - 8, y), "%.1f" % (tenth / 10), fill=TEXT_COLOUR, font=font, anchor="rm")
    for decade in range(int(math.log10(max_k)) + 1):
        x, _ = curve_point(10 ** decade, 0, max_k)
        draw.line([x, PLOT_TOP, x, PLOT_BOTTOM], fill=GRID_COLOUR)
        draw.text((x, PLOT_BOTTOM + 8), str(10 ** decade), fill=TEXT_COLOUR, font=font, anchor="mt")
    draw.line([PLOT_LEFT, PLOT_TOP, PLOT_LEFT, PLOT_BOTTOM, PLOT_RIGHT, PLOT_BOTTOM], fill=AXIS_COLOUR, width=2)
    draw.text(((PLOT_LEFT + PLOT_RIGHT) / 2, PLOT_BOTTOM + 30), "K (log scale)", fill=TEXT_COLOUR, font=font,
              anchor="mt")
    draw.text((12, (PLOT_TOP + PLOT_BOTTOM) / 2), "Recall@K", fill=TEXT_COLOUR, font=font, anchor="lm")
    draw.text(((PLOT_LEFT + PLOT_RIGHT) / 2, PLOT_TOP / 2), title, fill=TEXT_COLOUR,
              font=ImageFont.load_default(TITLE_FONT_SIZE), anchor="mm")
    points = [curve_point(k, recall_at_k[k], max_k) for k in ks]
    if len(points) > 1:
        draw.line(points, fill=CURVE_COLOUR, width=2)
    for x, y in points:
        draw.ellipse([x - MARKER_RADIUS, y - MARKER_RADIUS, x + MARKER_RADIUS, y + MARKER_RADIUS], fill=CURVE_COLOUR)
    return save_png(path, canvas)
