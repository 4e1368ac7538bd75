"""search.py end to end on the toy set: build, add and query an index; bad queries, bad indexes, crashed writes."""
import errno
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import infer
import reader
import search
from core import faiss_search, gallery_index

from script_tools import ROOT, TINY, error_line, run_main

# Paddle's default kernels: a oneDNN predictor would take longer to make than these few images take to extract.
MODEL = TINY + ["--embedding_size=8", "--num_workers=0", "--batch_size=8", "--use_mkldnn=False"]


def flags(command, index_dir, images=None, **extra):
    argv = [command] + MODEL + ["--index_dir=%s" % index_dir]
    argv += ["--images=%s" % images] if images else []
    return argv + ["--%s=%s" % item for item in extra.items()]


def unit(rows):
    rows = np.asarray(rows, np.float64)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def brute_force(queries, gallery, k):
    s = unit(queries) @ unit(gallery).T
    order = np.lexsort((np.broadcast_to(np.arange(s.shape[1]), s.shape), -s), axis=1)[:, :k]
    return order, np.take_along_axis(s, order, axis=1)


@pytest.fixture(scope="module")
def split_toy(toy_root, tmp_path_factory):
    """The toy set with Ebay_query.txt / Ebay_gallery.txt and the features infer.py extracts of Ebay_test.txt."""
    from data import split_query_gallery
    root = str(tmp_path_factory.mktemp("search") / "toy")
    shutil.copytree(toy_root, root)
    split_query_gallery.main(["--data_dir=%s" % root])
    features_path = os.path.join(root, "features.npy")
    infer.main(MODEL + ["--data_dir=%s" % root, "--save_features=%s" % features_path])
    by_path = dict(zip(open(infer.paths_file(features_path)).read().split("\n"), np.load(features_path)))
    return root, by_path


@pytest.fixture(scope="module")
def gallery_index_dir(split_toy, tmp_path_factory):
    root, _ = split_toy
    index_dir = str(tmp_path_factory.mktemp("index") / "gallery")
    search.main(flags("build", index_dir, os.path.join(root, "Ebay_gallery.txt")))
    return index_dir


def features_of(by_path, paths):
    return np.array([by_path[path] for path in paths])


def test_query_answers_the_exact_nearest_gallery_images(split_toy, gallery_index_dir, tmp_path, capsys):
    root, by_path = split_toy
    output = str(tmp_path / "results.jsonl")
    indices, scores = search.main(flags("query", gallery_index_dir, os.path.join(root, "Ebay_query.txt"), top_k=4,
                                        output=output, save_vis=str(tmp_path / "vis")))
    printed = capsys.readouterr().out
    query, gallery = (reader.read_list(root, name) for name in ("Ebay_query.txt", "Ebay_gallery.txt"))
    want_indices, want_scores = brute_force(features_of(by_path, query.paths), features_of(by_path, gallery.paths), 4)
    np.testing.assert_array_equal(indices, want_indices)
    np.testing.assert_allclose(scores, want_scores, atol=1e-5)
    records = [json.loads(line) for line in open(output)]
    assert [record["query"] for record in records] == query.paths
    first = records[0]["results"][0]
    assert first == {"rank": 1, "score": pytest.approx(want_scores[0, 0], abs=1e-5),
                     "path": gallery.paths[want_indices[0, 0]], "label": int(gallery.class_ids[want_indices[0, 0]])}
    assert records[0]["label"] == query.class_ids[0]
    assert "query 1: %s (label %d)" % (query.paths[0], query.class_ids[0]) in printed
    assert "%5d %9.5f %8s  %s" % (1, first["score"], first["label"], first["path"]) in printed
    assert sorted(os.listdir(tmp_path / "vis")) == ["query_%05d.png" % n for n in range(1, len(query.paths) + 1)]
    assert Image.open(tmp_path / "vis" / "query_00001.png").size[0] > 4 * 96


def test_query_expansion_and_reranking_through_the_command(split_toy, gallery_index_dir, capsys):
    root, by_path = split_toy
    from core import neighbours, rerank
    query, gallery = (reader.read_list(root, name) for name in ("Ebay_query.txt", "Ebay_gallery.txt"))
    query_features, gallery_features = features_of(by_path, query.paths), features_of(by_path, gallery.paths)
    got = search.main(flags("query", gallery_index_dir, os.path.join(root, "Ebay_query.txt"), top_k=3, qe_k=2,
                            rerank=True, rerank_k1=6, rerank_k2=2))
    near, near_scores = neighbours.nearest(query_features, gallery_features, 2)
    expanded = rerank.expand_queries(query_features, gallery_features, near, near_scores)
    want = rerank.KReciprocal(expanded, gallery_features, 6, 2, 0.3).top_k(3)
    np.testing.assert_allclose(got[1], want[1], atol=1e-5)
    assert (got[0] == want[0]).mean() > 0.9  # float rounding may swap exact ties


def test_an_unreadable_query_is_named_and_the_others_answered(gallery_index_dir, split_toy, tmp_path, capsys):
    root, _ = split_toy
    folder = tmp_path / "queries"
    query = reader.read_list(root, "Ebay_query.txt")
    for number, path in enumerate(query.paths[:3]):
        os.makedirs(folder, exist_ok=True)
        shutil.copy(path, folder / ("%d.jpg" % number))
    (folder / "1.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    output = str(tmp_path / "out.jsonl")
    code, out, err = run_main(search, flags("query", gallery_index_dir, str(folder), output=output), capsys)
    assert code == 0
    assert "warning: skipped an unreadable query image: %s: " % (folder / "1.jpg") in err
    assert "query 1: %s" % (folder / "0.jpg") in out and "query 2: %s" % (folder / "2.jpg") in out
    assert "2 queries searched 22 indexed images, 1 unreadable skipped" in out
    records = [json.loads(line) for line in open(output)]
    assert [record["query"] for record in records] == [str(folder / name) for name in ("0.jpg", "2.jpg", "1.jpg")]
    assert records[2]["error"].startswith(str(folder / "1.jpg"))
    (folder / "0.jpg").write_bytes(b"")
    (folder / "2.jpg").write_bytes(b"")
    code, _, err = run_main(search, flags("query", gallery_index_dir, str(folder)), capsys)
    assert code == 1 and "none of its 3 images could be read" in error_line(err)


def test_add_appends_and_refuses_another_model(split_toy, tmp_path, capsys):
    root, by_path = split_toy
    index_dir = str(tmp_path / "index")
    shutil.copytree(os.path.join(root, "bicycle_final"), tmp_path / "bicycles")
    search.main(flags("build", index_dir, os.path.join(root, "Ebay_gallery.txt")))
    search.main(flags("add", index_dir, str(tmp_path / "bicycles")))
    gallery = gallery_index.load(index_dir)
    added = sorted(str(tmp_path / "bicycles" / name) for name in os.listdir(tmp_path / "bicycles"))
    assert gallery.paths[-len(added):] == added and gallery.labels[-1] is None and gallery.labels[0] is not None
    assert len(gallery.manifest["parts"]) == 2 and gallery.features.shape == (22 + len(added), 8)
    np.testing.assert_allclose(gallery.features[:22], features_of(by_path, gallery.paths[:22]), atol=1e-5)
    capsys.readouterr()

    before = open(os.path.join(index_dir, gallery_index.MANIFEST)).read()
    code, _, err = run_main(search, flags("add", index_dir, str(tmp_path / "bicycles")).__add__(
        ["--embedding_size=16"]), capsys)
    assert code == 1
    assert "was built with another model (ResNet18, --embedding_size=8" in error_line(err)
    assert open(os.path.join(index_dir, gallery_index.MANIFEST)).read() == before


def test_build_from_infer_features_equals_build_from_images(split_toy, gallery_index_dir, tmp_path, capsys):
    root, _ = split_toy
    features_path = os.path.join(root, "features.npy")
    index_dir = str(tmp_path / "from_features")
    search.main(flags("build", index_dir, os.path.join(root, "Ebay_test.txt"), features=features_path))
    from_features = gallery_index.load(index_dir)
    test = reader.read_list(root, reader.TEST_LIST)
    assert from_features.paths == test.paths and from_features.labels == test.class_ids.tolist()
    np.testing.assert_array_equal(from_features.features, np.load(features_path))
    assert from_features.model == gallery_index.load(gallery_index_dir).model
    code, _, err = run_main(search, flags("build", str(tmp_path / "other"), features=features_path)
                            + ["--embedding_size=16"], capsys)
    assert code == 1 and "16-d features" in error_line(err)


def corrupt(index_dir, tmp_path, how):
    broken = str(tmp_path / ("broken_" + how))
    shutil.copytree(index_dir, broken)
    manifest_path = os.path.join(broken, gallery_index.MANIFEST)
    manifest = json.load(open(manifest_path))
    part = manifest["parts"][0]
    if how == "missing_part":
        os.remove(os.path.join(broken, part["features"]))
    elif how == "short_paths":
        lines = open(os.path.join(broken, part["paths"])).readlines()
        open(os.path.join(broken, part["paths"]), "w").writelines(lines[:-1])
    elif how == "truncated_manifest":
        open(manifest_path, "w").write(open(manifest_path).read()[:40])
    elif how == "newer":
        manifest.update(format=gallery_index.FORMAT_VERSION + 1, suite_version="9.0.0")
        json.dump(manifest, open(manifest_path, "w"))
    elif how == "no_manifest":
        os.remove(manifest_path)
    return broken


@pytest.mark.parametrize("how, message", [
    ("missing_part", "incomplete: part-"),
    ("short_paths", "paths.txt lists 21 paths, index.json says 22"),
    ("truncated_manifest", "index.json is damaged"),
    ("newer", "written by a newer version of the suite (9.0.0, index format 2); this one (1.0.0) reads index format 1"),
    ("no_manifest", "not an index directory (no index.json); make one with search.py build"),
])
def test_a_broken_or_newer_index_is_refused_in_one_line(gallery_index_dir, split_toy, tmp_path, capsys, how,
                                                        message):
    root, _ = split_toy
    broken = corrupt(gallery_index_dir, tmp_path, how)
    for command in ("query", "add"):
        code, _, err = run_main(search, flags(command, broken, os.path.join(root, "Ebay_query.txt")), capsys)
        assert code == 1 and error_line(err).startswith("error: %s: " % broken) and message in err


def test_a_crash_while_adding_or_building_leaves_the_previous_index_usable(split_toy, tmp_path, capsys, monkeypatch):
    root, _ = split_toy
    index_dir = str(tmp_path / "index")
    features = os.path.join(root, "features.npy")
    search.main(flags("build", index_dir, features=features))
    before = search.main(flags("query", index_dir, os.path.join(root, "Ebay_query.txt")))
    files_before = sorted(os.listdir(index_dir))

    def crash(handle, value):  # the process is stopped while writing the new manifest, after the new part
        handle.write(b'{"format": 1, "parts": [')
        raise KeyboardInterrupt

    monkeypatch.setattr(gallery_index, "_write_json", crash)
    with pytest.raises(KeyboardInterrupt):
        search.main(flags("add", index_dir, features=features))
    with pytest.raises(KeyboardInterrupt):  # a new build over it, from other images
        search.main(flags("build", index_dir, os.path.join(root, "Ebay_query.txt")))
    monkeypatch.undo()
    assert len(os.listdir(index_dir)) > len(files_before)  # the new part is there, unnamed
    after = search.main(flags("query", index_dir, os.path.join(root, "Ebay_query.txt")))
    np.testing.assert_array_equal(after[0], before[0])
    # the next write cleans up what the crash left
    search.main(flags("add", index_dir, features=features))
    manifest = gallery_index.read_manifest(index_dir)
    named = {part[key] for part in manifest["parts"] for key in ("features", "paths")}
    assert set(os.listdir(index_dir)) == named | {gallery_index.MANIFEST, gallery_index.LOCK_FILE}
    assert manifest["count"] == 60


def test_a_full_disk_while_writing_the_index_is_one_error_line(split_toy, tmp_path, capsys, monkeypatch):
    root, _ = split_toy
    index_dir = str(tmp_path / "index")

    def disk_full(handle, value):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(gallery_index, "_write_json", disk_full)
    code, _, err = run_main(search, flags("build", index_dir, features=os.path.join(root, "features.npy")), capsys)
    assert code == 1
    assert error_line(err) == ("error: %s: cannot be written (OSError: [Errno 28] No space left on device)"
                               % os.path.join(index_dir, gallery_index.MANIFEST))
    assert not any(name.endswith(gallery_index.MANIFEST) for name in os.listdir(index_dir))


def test_a_second_writer_is_refused_while_one_writes(gallery_index_dir, tmp_path):
    directory = str(tmp_path / "locked")
    with gallery_index.Writer(directory):
        with pytest.raises(gallery_index.GalleryIndexError, match="another search.py build or add \\(pid %d\\)"
                           % os.getpid()):
            with gallery_index.Writer(directory):
                pass


@pytest.mark.parametrize("index_type", faiss_search.INDEX_TYPES)
def test_faiss_structures_answer_and_check_themselves_against_exact_search(split_toy, tmp_path, capsys,
                                                                            index_type):
    pytest.importorskip("faiss")
    root, by_path = split_toy
    index_dir = str(tmp_path / index_type)
    search.main(flags("build", index_dir, os.path.join(root, "Ebay_gallery.txt"), index_type=index_type, nlist=4))
    assert gallery_index.load(index_dir).approximate["type"] == index_type
    capsys.readouterr()
    indices, _ = search.main(flags("query", index_dir, os.path.join(root, "Ebay_query.txt"), top_k=3,
                                   check_exact=5, nprobe=4))
    out = capsys.readouterr().out
    assert "faiss %s: recall@3 1.0000 against exact search on 5 queries" % index_type in out
    query, gallery = (reader.read_list(root, name) for name in ("Ebay_query.txt", "Ebay_gallery.txt"))
    want, _ = brute_force(features_of(by_path, query.paths), features_of(by_path, gallery.paths), 3)
    assert (indices == want).mean() > 0.9  # nprobe = nlist, ef_search > N: exact up to float rounding
    search.main(flags("add", index_dir, os.path.join(root, "Ebay_query.txt")))
    assert gallery_index.load(index_dir).approximate["type"] == index_type
    assert faiss_search.load(os.path.join(index_dir, gallery_index.load(index_dir).approximate["file"])).ntotal == 30


@pytest.mark.parametrize("argv, message", [
    (["query"] + MODEL + ["--images=x.jpg"], "--index_dir: give the index directory"),
    (["build"] + MODEL + ["--index_dir=x"], "--images: give the images to index"),
    (["query"] + MODEL + ["--index_dir=x"], "--images: give the query images"),
    (["query"] + MODEL + ["--index_dir=x", "--images=y", "--top_k=0"], "--top_k: must be positive"),
    (["build"] + MODEL + ["--index_dir=x", "--images=y", "--index_type=lsh"], "--index_type: 'lsh' is not one of"),
    (["build"] + MODEL + ["--index_dir=x", "--features=y.txt"], "--features: must end in .npy"),
    (["find"], "invalid choice: 'find'"),
])
def test_flag_errors_exit_2_naming_the_flag(capsys, argv, message):
    code, _, err = run_main(search, argv, capsys)
    assert code == 2 and message in error_line(err)


def test_approximate_types_need_faiss(monkeypatch, capsys):
    monkeypatch.setattr(faiss_search, "available", lambda: False)
    code, _, err = run_main(search, ["build"] + MODEL + ["--index_dir=x", "--images=y", "--index_type=hnsw"], capsys)
    assert code == 2 and "--index_type: hnsw needs faiss (pip install faiss-cpu)" in err


def test_check_exact_needs_an_approximate_structure(gallery_index_dir, capsys):
    code, _, err = run_main(search, flags("query", gallery_index_dir, "x.jpg", check_exact=3), capsys)
    assert code == 2 and "--check_exact: %s has no approximate structure" % gallery_index_dir in err


def test_help_lists_the_commands_and_their_flags():
    result = subprocess.run([sys.executable, os.path.join(ROOT, "search.py"), "query", "--help"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0
    assert all(flag in result.stdout for flag in ("--top_k", "--rerank", "--qe_k", "--memory_mb", "--check_exact"))
    parser, subparsers = search.make_parser()
    assert all(command in parser.format_help() for command in ("build", "add", "query"))
    assert all(flag in subparsers["build"].format_help() for flag in ("--index_type", "--features", "--nlist"))
