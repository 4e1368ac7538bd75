"""Backbone networks for metric learning, selectable by name (``--model=ResNet50``).

Each constructor returns an object whose ``net(input, embedding_size=0, is_test=False)`` builds the network into the
current static program and returns the pooled feature (or an embedding of ``embedding_size``).
"""
import core  # noqa: F401  (thread counts set before paddle is imported)

from .resnet import ResNet, ResNet18, ResNet34, ResNet50, ResNet101, ResNet152
from .se_resnext import SE_ResNeXt, SE_ResNeXt50_32x4d, SE_ResNeXt101_32x4d, SE_ResNeXt152_64x4d

MODELS = {
    "ResNet18": ResNet18,
    "ResNet34": ResNet34,
    "ResNet50": ResNet50,
    "ResNet101": ResNet101,
    "ResNet152": ResNet152,
    "SE_ResNeXt50_32x4d": SE_ResNeXt50_32x4d,
    "SE_ResNeXt101_32x4d": SE_ResNeXt101_32x4d,
    "SE_ResNeXt152_64x4d": SE_ResNeXt152_64x4d,
}


def get_model(name):
    """Construct the model registered as ``name``; raises ValueError naming the valid choices otherwise."""
    if name not in MODELS:
        raise ValueError("unknown model %r; choose one of: %s" % (name, ", ".join(MODELS)))
    return MODELS[name]()
