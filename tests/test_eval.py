"""eval.py's added metrics on the toy set: Recall@K per super class, the clustering's NMI and F1, and flag errors."""
import os

import numpy as np
import pytest

import eval as eval_script
import infer
import reader
from core import clustering

from script_tools import TINY, run_main
from test_metrics import brute_force


def test_super_class_recall_and_clustering_come_from_the_features(toy_root, tmp_path, capsys):
    flags = TINY + ["--embedding_size=8", "--data_dir=%s" % toy_root, "--num_workers=0", "--batch_size=16"]
    features_path = str(tmp_path / "features.npy")
    infer.main(flags + ["--save_features=%s" % features_path])
    features = np.load(features_path)
    test_list = reader.read_image_list(os.path.join(toy_root, reader.TEST_LIST))
    capsys.readouterr()

    results = eval_script.main(flags + ["--recall_k=1,3", "--by_super_class=True", "--cluster_metrics=True",
                                        "--seed=5"])
    output = capsys.readouterr().out
    groups = test_list.super_class_ids
    assert sorted(results["by_super_class"]) == sorted(str(group) for group in np.unique(groups))
    for group in np.unique(groups):
        # each query of the group still searches every other test image
        chosen = groups == group
        got = results["by_super_class"][str(group)]
        hits = group_hits(features, test_list.class_ids, chosen)
        assert got["num_queries"] == chosen.sum()
        assert got["recall@1"] == pytest.approx(hits[1]) and got["recall@3"] == pytest.approx(hits[3])
    assert results["recall@1"] == pytest.approx(brute_force(features, test_list.class_ids, ks=(1,))["recall@1"])
    weighted = sum(group["recall@3"] * group["num_queries"] for group in results["by_super_class"].values())
    assert weighted / len(features) == pytest.approx(results["recall@3"])
    assert "| super class | queries | Recall@1 | Recall@3 |" in output
    clusters = clustering.clustering_metrics(features, test_list.class_ids, seed=5)
    assert results["nmi"] == pytest.approx(clusters["nmi"], abs=1e-6)
    assert results["f1"] == pytest.approx(clusters["f1"], abs=1e-6)
    assert "k-means (%s) of %d features into 8 clusters" % (clusters["kmeans"], len(features)) in output
    assert "| NMI | %.4f |" % results["nmi"] in output


def group_hits(features, labels, chosen):
    """Recall@1 and @3 over the chosen queries, each against all other images, by a full sort."""
    normalised = features / np.linalg.norm(features, axis=1, keepdims=True)
    similarity = normalised.astype(np.float64) @ normalised.T.astype(np.float64)
    np.fill_diagonal(similarity, -np.inf)
    hits = {1: [], 3: []}
    for query in np.flatnonzero(chosen):
        positive = labels == labels[query]
        positive[query] = False
        best = similarity[query][positive].max() if positive.any() else np.nan
        rank = 1 + np.count_nonzero(similarity[query][~positive] >= best) if positive.any() else np.inf
        for k in hits:
            hits[k].append(rank <= k)
    return {k: np.mean(value) for k, value in hits.items()}


@pytest.mark.parametrize("flag", ["--rerank=True", "--qe_k=3"])
def test_reranking_without_a_gallery_is_a_flag_error(flag, capsys):
    code, _, err = run_main(eval_script, TINY + [flag], capsys)
    assert code == 2 and "re-ranking needs a gallery: give --query_list and --gallery_list" in err


@pytest.mark.parametrize("flag, message", [("--rerank_lambda=1.5", "--rerank_lambda: must be in [0, 1]"),
                                           ("--rerank_k1=0", "--rerank_k1: must be positive"),
                                           ("--qe_alpha=-1", "--qe_alpha: must not be negative")])
def test_bad_reranking_values_exit_2_naming_the_flag(flag, message, capsys):
    code, _, err = run_main(eval_script, TINY + [flag], capsys)
    assert code == 2 and message in err
