"""The benchmark layers: (name, input CHW, weight OIHW, stride, padding, groups).

AlexNet uses the original grouped Caffe shapes; GoogLeNet the inception 3x3 and 5x5 branches;
ResNet-50 the 3x3 convolution of each stage; VGG-16 conv3_2, conv4_2 and conv5_2.
``pruned_weight`` gives every script the same random pruned weights for a layer."""
import numpy as np

LAYERS = [
    ("alexnet_conv2", (96, 27, 27), (256, 48, 5, 5), 1, 2, 2),
    ("alexnet_conv3", (256, 13, 13), (384, 256, 3, 3), 1, 1, 1),
    ("alexnet_conv4", (384, 13, 13), (384, 192, 3, 3), 1, 1, 2),
    ("alexnet_conv5", (384, 13, 13), (256, 192, 3, 3), 1, 1, 2),
    ("googlenet_3a_3x3", (96, 28, 28), (128, 96, 3, 3), 1, 1, 1),
    ("googlenet_3a_5x5", (16, 28, 28), (32, 16, 5, 5), 1, 2, 1),
    ("googlenet_4a_3x3", (96, 14, 14), (208, 96, 3, 3), 1, 1, 1),
    ("googlenet_4a_5x5", (16, 14, 14), (48, 16, 5, 5), 1, 2, 1),
    ("resnet50_layer1_3x3", (64, 56, 56), (64, 64, 3, 3), 1, 1, 1),
    ("resnet50_layer2_3x3", (128, 28, 28), (128, 128, 3, 3), 1, 1, 1),
    ("resnet50_layer3_3x3", (256, 14, 14), (256, 256, 3, 3), 1, 1, 1),
    ("resnet50_layer4_3x3", (512, 7, 7), (512, 512, 3, 3), 1, 1, 1),
    ("vgg16_conv3_2", (256, 56, 56), (256, 256, 3, 3), 1, 1, 1),
    ("vgg16_conv4_2", (512, 28, 28), (512, 512, 3, 3), 1, 1, 1),
    ("vgg16_conv5_2", (512, 14, 14), (512, 512, 3, 3), 1, 1, 1),
]

# Convolutions of networks the benchmark and the shipped knobs do not use, fixed before any of
# them was timed: they check that the untuned defaults generalise (same format; a padding
# may be a (height, width) pair).
UNSEEN_LAYERS = [
    ("mobilenetv2_expand", (32, 28, 28), (192, 32, 1, 1), 1, 0, 1),
    ("mobilenetv2_dw3x3", (192, 28, 28), (192, 1, 3, 3), 1, 1, 192),
    ("mobilenetv2_project", (192, 14, 14), (64, 192, 1, 1), 1, 0, 1),
    ("densenet121_3x3", (128, 28, 28), (32, 128, 3, 3), 1, 1, 1),
    ("densenet121_1x1", (256, 28, 28), (128, 256, 1, 1), 1, 0, 1),
    ("inception_v3_7x1", (128, 17, 17), (128, 128, 7, 1), 1, (3, 0), 1),
    ("inception_v3_1x7", (128, 17, 17), (192, 128, 1, 7), 1, (0, 3), 1),
    ("inception_v3_3x3_s2", (288, 35, 35), (384, 288, 3, 3), 2, 0, 1),
    ("efficientnet_b0_dw5x5", (240, 28, 28), (240, 1, 5, 5), 1, 2, 240),
    ("efficientnet_b0_expand", (40, 28, 28), (240, 40, 1, 1), 1, 0, 1),
    ("resnext50_grouped3x3", (128, 56, 56), (128, 4, 3, 3), 1, 1, 32),
    ("squeezenet_expand3x3", (16, 55, 55), (64, 16, 3, 3), 1, 1, 1),
]
LAYER_SETS = {"benchmark": LAYERS, "unseen": UNSEEN_LAYERS}


def conv_inputs(model, example) -> dict:
    """{module name: (input shape, the Conv2d)} of ``model``'s convolutions, in the order a
    forward pass on ``example`` first reaches them."""
    import torch

    shapes = {}

    def record(name):
        def hook(module, inputs, _output):
            shapes.setdefault(name, (tuple(inputs[0].shape), module))
        return hook

    hooks = [m.register_forward_hook(record(name))
             for name, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for hook in hooks:
            hook.remove()
    return shapes


def network_layers(network: str, size: int = 224):
    """The distinct convolutions of one of escoin_tvm.models' networks at ``size`` x ``size``, in
    the LAYERS format (name ``network:module``; dilation 1, symmetric padding), as the compiler
    runs them: a strided 1x1 convolution as the stride-1 one of its subsampled input."""
    import torch

    from escoin_tvm import models
    from escoin_tvm.kernels.conv_spec import Conv2dSpec

    inputs = conv_inputs(models.build(network).eval(), torch.zeros(1, 3, size, size))
    shapes = {name: (shape[1:], conv) for name, (shape, conv) in inputs.items()}
    layers, seen = [], set()
    for name, (chw, conv) in shapes.items():
        stride, padding = conv.stride, conv.padding
        stride_one = Conv2dSpec.create((1, *chw), conv.weight.shape, stride=stride,
                                       padding=padding, groups=conv.groups).subsampled()
        if stride_one is not None:
            chw, stride, padding = stride_one.input_shape[1:], (1, 1), (0, 0)
        key = (chw, tuple(conv.weight.shape), stride, padding, conv.groups)
        if key not in seen and conv.dilation == (1, 1):
            seen.add(key)
            layers.append((f"{network}:{name}", chw, tuple(conv.weight.shape), stride, padding,
                           conv.groups))
    return layers


def pruned_weight(shape, sparsity, seed):
    """The benchmark's random weight for a layer (seed: its index in LAYERS), magnitude-pruned."""
    from escoin_tvm.prune import prune_array

    rng = np.random.default_rng(seed)
    return prune_array(rng.standard_normal(shape).astype(np.float32) * 0.05, sparsity)
