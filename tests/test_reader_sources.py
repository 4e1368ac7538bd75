"""reader.read_images (folders, single images, SOP lists, plain lists), subset and readable_batches."""
import os

import numpy as np
import pytest
from PIL import Image

import reader


def write_image(path, colour=(200, 30, 30)):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", (24, 24), colour).save(path)


def test_a_folder_gives_its_image_files_in_name_order(tmp_path):
    for name in ("b/2.png", "a/1.JPG", "c.jpeg"):
        write_image(str(tmp_path / name))
    (tmp_path / "notes.txt").write_text("not an image")
    images = reader.read_images(str(tmp_path))
    assert images.paths == [str(tmp_path / name) for name in ("a/1.JPG", "b/2.png", "c.jpeg")]
    assert images.class_ids is None and list(images.image_ids) == [1, 2, 3]
    os.makedirs(tmp_path / "empty")
    with pytest.raises(reader.ListFormatError, match="empty: no image files"):
        reader.read_images(str(tmp_path / "empty"))


def test_lists_in_either_format_and_single_images(tmp_path):
    write_image(str(tmp_path / "img" / "x.jpg"))
    (tmp_path / "plain.txt").write_text("img/x.jpg\n\n%s\r\n" % (tmp_path / "img" / "x.jpg"))
    plain = reader.read_images(str(tmp_path / "plain.txt"))
    assert plain.paths == [str(tmp_path / "img" / "x.jpg")] * 2 and plain.class_ids is None
    (tmp_path / "sop.txt").write_text("image_id class_id super_class_id path\n7 3 2 img/x.jpg\n")
    sop = reader.read_images(str(tmp_path / "sop.txt"))
    assert list(sop.class_ids) == [3] and list(sop.super_class_ids) == [2] and sop.paths == plain.paths[:1]
    assert reader.read_images(str(tmp_path / "img" / "x.jpg")).paths == plain.paths[:1]
    with pytest.raises(reader.ListFormatError, match="nowhere.jpg: no such file or directory"):
        reader.read_images(str(tmp_path / "nowhere.jpg"))
    (tmp_path / "blank.txt").write_text("\n \n")
    with pytest.raises(reader.ListFormatError, match="blank.txt: no image paths listed"):
        reader.read_images(str(tmp_path / "blank.txt"))
    (tmp_path / "tab.txt").write_text("img/x.jpg\nimg/\x07.jpg\n")
    with pytest.raises(reader.ListFormatError, match="tab.txt:2: path"):
        reader.read_images(str(tmp_path / "tab.txt"))


def test_subset_keeps_every_field_in_step(toy_root):
    whole = reader.read_list(toy_root, reader.TEST_LIST)
    part = reader.subset(whole, 3, 9)
    assert part.paths == whole.paths[3:9] and list(part.class_ids) == list(whole.class_ids[3:9])
    assert list(part.image_ids) == list(whole.image_ids[3:9])


@pytest.mark.parametrize("num_workers", [0, 2])
def test_unreadable_images_are_named_and_left_out(tmp_path, num_workers):
    paths = []
    for i in range(7):
        paths.append(str(tmp_path / ("%d.jpg" % i)))
        if i in (1, 5):
            open(paths[-1], "wb").write(b"not a jpeg")
        else:
            write_image(paths[-1], (30 * i, 0, 0))
    images = reader._unlabelled(str(tmp_path / "list.txt"), paths)
    batches = list(reader.readable_batches(images, 3, (3, 16, 16), num_workers))
    kept = [path for _, batch_paths, _ in batches for path in batch_paths]
    assert kept == [path for i, path in enumerate(paths) if i not in (1, 5)]
    assert [len(batch[0]) for batch in batches] == [2, 2, 1]
    skipped = [entry for _, _, bad in batches for entry in bad]
    assert [path for path, _ in skipped] == [paths[1], paths[5]]
    assert all(message.startswith(path + ": ") for path, message in skipped)
    # the images kept are the readable ones, decoded as eval decodes them
    every = list(reader.infer_batches(reader.subset(images, 2, 3), 1, (3, 16, 16), 0))
    np.testing.assert_array_equal(batches[0][0][1], every[0][0][0])
