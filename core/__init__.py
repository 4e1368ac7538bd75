"""The library behind the commands (train_elem.py, train_pair.py, eval.py, infer.py, export_model.py, search.py,
demo.py).

    paddle_env   thread counts and log level, set before Paddle is imported (importing `core` does it first)
    flags        every command-line flag, declared and checked once
    trainer      the one training loop: programs -> steps -> log, test, save
    programs     the static programs: training (network + loss + optimizer) and features (image -> feature)
    checkpoint   atomic checkpoints, exact resume, the save-directory lock
    weights      reading weight files: checkpoints, .pdparams, Fluid variable files
    pretrained   --pretrained_model: loading weights by name and shape
    onednn       oneDNN on CPU: training convolutions, Paddle Inference's predictor for features
    distributed  data parallel and sharded feature extraction over paddle.distributed.launch
    similarity   the blocked, memory-bounded similarity matrix behind metrics, neighbours and rerank
    metrics      exact, memory-bounded Recall@K, MAP@R and R-Precision
    neighbours   exact top-K search on the same blocks
    rerank       k-reciprocal re-ranking and query expansion
    clustering   k-means of the features and its NMI and pair F1 against the classes
    gallery_index  search.py's index directory: features, paths, labels, model fingerprint; atomic writes
    faiss_search   optional approximate structures (faiss flat, IVF, HNSW)
    visualize    retrieval pictures and the Recall@K curve
    run_log      the run's configuration file and VisualDL scalars
    image_ops    decoding, augmentation and the test-time path of one image
    samplers     which images make each training batch, by the loss's batch layout
    worker_pool  the decoding processes behind reader.py

models/, losses/, reader.py and utility.py, beside this package, are the design's own modules.
"""
from core import paddle_env  # noqa: F401

# The suite's version, written into what outlives a run (search.py's index directories).
__version__ = "1.0.0"
