"""PyTorch reference for bench/train_throughput.py: the ResNet layout of models/resnet.py, trained and evaluated.

    python bench/torch_reference.py '{"steps": 2, "configs": [{"key": "k", "kind": "train", "blocks": [2, 2, 2, 2],
        "bottleneck": false, "shape": [3, 64, 64], "batch": 32, "classes": 40, "device": "cpu", "dtype": "float32"}]}'

prints one JSON line, {key: images per second}, or {"error": message} when torch cannot be imported. The benchmark
runs it in a process of its own, since torch and Paddle each bring their own OpenMP runtime. Training is the network
with a linear softmax head, SGD with momentum 0.9 and weight decay 1e-4; evaluation is the forward pass under
torch.inference_mode. A "dtype" other than float32 trains under torch.autocast in that type (on a GPU float16 with a
GradScaler, as Paddle's float16 AMP scales its loss). Each configuration times `steps` steps after one untimed step;
on a GPU each step ends by waiting for the device.
"""
import contextlib
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench import timing  # noqa: E402  (no Paddle: torch's OpenMP runtime must be the only one here)

STAGE_WIDTHS = (64, 128, 256, 512)


def build_network(nn, blocks, bottleneck):
    def conv_bn(in_channels, out_channels, size, stride=1):
        return nn.Sequential(nn.Conv2d(in_channels, out_channels, size, stride, (size - 1) // 2, bias=False),
                             nn.BatchNorm2d(out_channels, eps=1e-5, momentum=0.1))

    class Block(nn.Module):
        def __init__(self, in_channels, width, stride):
            super().__init__()
            out_channels = width * 4 if bottleneck else width
            if bottleneck:  # the stride on the 3x3 convolution, as in models/resnet.py
                self.branch = nn.Sequential(conv_bn(in_channels, width, 1), nn.ReLU(), conv_bn(width, width, 3, stride),
                                            nn.ReLU(), conv_bn(width, out_channels, 1))
            else:
                self.branch = nn.Sequential(conv_bn(in_channels, width, 3, stride), nn.ReLU(),
                                            conv_bn(width, width, 3))
            same = in_channels == out_channels and stride == 1
            self.shortcut = nn.Identity() if same else conv_bn(in_channels, out_channels, 1, stride)
            self.out_channels = out_channels

        def forward(self, x):
            return (self.shortcut(x) + self.branch(x)).relu()

    layers = [conv_bn(3, 64, 7, 2), nn.ReLU(), nn.MaxPool2d(3, 2, 1)]
    channels = 64
    for stage, (num_blocks, width) in enumerate(zip(blocks, STAGE_WIDTHS)):
        for index in range(num_blocks):
            layers.append(Block(channels, width, 2 if index == 0 and stage > 0 else 1))
            channels = layers[-1].out_channels
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return nn.Sequential(*layers), channels


def images_per_second(torch, config, steps):
    device = torch.device(config.get("device", "cpu"))
    dtype = config.get("dtype", "float32")
    network, feature_size = build_network(torch.nn, config["blocks"], config["bottleneck"])
    network.to(device)
    images = torch.randn([config["batch"]] + config["shape"], device=device)
    wait = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if config["kind"] == "eval":
        network.eval()

        def step():
            with torch.inference_mode():
                network(images)
            wait()
    else:
        head = torch.nn.Linear(feature_size, config["classes"]).to(device)
        labels = torch.arange(config["batch"], device=device) % config["classes"]
        parameters = list(network.parameters()) + list(head.parameters())
        optimizer = torch.optim.SGD(parameters, lr=0.01, momentum=0.9, weight_decay=1e-4)
        low_precision = dtype != "float32"
        scaler = torch.amp.GradScaler(device.type, enabled=low_precision and dtype == "float16")

        def step():
            autocast = torch.autocast(device.type, dtype=getattr(torch, dtype)) if low_precision \
                else contextlib.nullcontext()
            with autocast:
                loss = torch.nn.functional.cross_entropy(head(network(images)).float(), labels)
            optimizer.zero_grad()
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            wait()
    return timing.images_per_second(step, config["batch"], steps)


def main(request):
    try:
        import torch
    except ImportError as error:
        return {"error": "torch is not installed (%s)" % error}
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1))
    torch.manual_seed(0)
    return {config["key"]: images_per_second(torch, config, request["steps"]) for config in request["configs"]}


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.argv[1]))), flush=True)
