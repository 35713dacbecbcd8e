"""Model zoo: CNNs for Fashion-MNIST and Hugging Face models from local packages."""

from __future__ import annotations

from . import cnn, hf, minilm_docs
from .registry import ModelEntry, build_model, model_entry, model_names, register_model

_FM = "fashion-mnist"
register_model(ModelEntry("lenet300", cnn.LeNet300, "classification", _FM, "LeNet-300-100 MLP (266k params)"))
register_model(ModelEntry("lenet5", cnn.LeNet5, "classification", _FM, "LeNet-5, Caffe variant (431k params)"))
register_model(
    ModelEntry(
        "resnet20",
        cnn.ResNetCifar,
        "classification",
        _FM,
        "CIFAR-style ResNet-20 (272k params)",
        defaults={"depth": 20},
    )
)
register_model(
    ModelEntry(
        "mobilenetv2", cnn.MobileNetV2, "classification", _FM, "small MobileNetV2: depthwise convs, inverted residuals"
    )
)
register_model(ModelEntry("vgg11bn", cnn.VGG11BN, "classification", _FM, "VGG-11 with BN, half width"))

# Names only: transformers is imported when one of these models is built (extra `netslim[llm]`).
hf.register_hf_models()
register_model(
    ModelEntry(
        "minilm-docs",
        minilm_docs.minilm_docs,
        "classification",
        "docs-sections",
        "all-MiniLM-L6-v2 + classification head over the docs-sections labels (train it)",
        self_described=True,
    )
)

__all__ = ["ModelEntry", "build_model", "model_entry", "model_names", "register_model"]
