"""docs/deployment.md's example, run as written on an exported model: its features are infer.py's, normalised."""
import contextlib
import io
import os
import re

import numpy as np
import paddle
from PIL import Image

import export_model
import infer
import reader
from core import programs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SNIPPET = re.compile(r"<!-- deployment snippet -->\n```python\n(.*?)```\n<!-- end of deployment snippet -->", re.S)
# The snippet's file names, and the toy images (of several sizes) that stand in for them here.
IMAGES = ["gallery/mug_1.jpg", "gallery/mug_2.jpg", "gallery/chair_1.jpg", "query.jpg"]


def snippet():
    with open(os.path.join(ROOT, "docs", "deployment.md")) as page:
        return SNIPPET.search(page.read()).group(1)


def make_images(toy_root, directory):
    """The snippet's four image files, from toy images resized to other sizes, one of them turned by EXIF."""
    sources = reader.read_list(toy_root, reader.TEST_LIST).paths
    for index, (name, size) in enumerate(zip(IMAGES, [(90, 60), (60, 90), (224, 224), (130, 75)])):
        os.makedirs(os.path.join(directory, os.path.dirname(name)), exist_ok=True)
        image = Image.open(sources[index * 5]).convert("RGB").resize(size)
        exif = image.getexif()
        if name == "query.jpg":
            exif[0x0112] = 8  # stored turned by 90 degrees
        image.save(os.path.join(directory, name), quality=92, exif=exif)
    with open(os.path.join(directory, reader.TEST_LIST), "w") as list_file:
        list_file.write(" ".join(reader.LIST_HEADER) + "\n")
        list_file.writelines("%d 1 1 %s\n" % (index, name) for index, name in enumerate(IMAGES, start=1))


def test_the_deployment_example_gives_infer_features(toy_root, tmp_path, monkeypatch):
    paddle.enable_static()
    with paddle.static.scope_guard(paddle.static.Scope()):
        feature_program = programs.build_feature_program("ResNet18", 8, (3, 224, 224))
        executor = paddle.static.Executor(paddle.CPUPlace())
        executor.run(feature_program.startup)
        paddle.static.save(feature_program.program, str(tmp_path / "weights"))
    make_images(toy_root, str(tmp_path))
    network = ["--model=ResNet18", "--embedding_size=8", "--image_shape=3,224,224", "--use_gpu=False",
               "--pretrained_model=%s" % (tmp_path / "weights.pdparams")]
    export_model.main(network + ["--model_save_dir=%s" % (tmp_path / "inference_model")])
    # infer.py on Paddle's default kernels, as the snippet's executor runs them: the same rounding.
    infer.main(network + ["--data_dir=%s" % tmp_path, "--save_features=%s" % (tmp_path / "infer.npy"),
                          "--use_mkldnn=False", "--num_workers=0"])
    expected = np.load(tmp_path / "infer.npy")
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)

    monkeypatch.chdir(tmp_path)
    namespace, printed = {}, io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(snippet(), namespace)
    np.testing.assert_allclose(namespace["gallery"], expected[:3], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(namespace["query"], expected[3], rtol=1e-5, atol=1e-6)
    ranking = [line.split() for line in printed.getvalue().splitlines()]
    similarities = expected[:3] @ expected[3]
    assert [int(rank) for rank, _, _ in ranking] == [1, 2, 3]
    assert [path for _, _, path in ranking] == [IMAGES[index] for index in np.argsort(-similarities)]
