"""Convolution configurations every backend is checked on."""
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Case:
    name: str
    input_shape: tuple
    weight_shape: tuple
    stride: object = 1
    padding: object = 0
    dilation: object = 1
    groups: int = 1
    sparsity: float = 0.9
    bias: bool = False
    relu: bool = False
    kwargs: dict = field(default_factory=dict, compare=False)

    def conv_args(self):
        return dict(stride=self.stride, padding=self.padding, dilation=self.dilation,
                    groups=self.groups)


CASES = [
    Case("1x1", (2, 16, 9, 9), (24, 16, 1, 1)),
    Case("3x3_pad1", (1, 8, 14, 14), (16, 8, 3, 3), padding=1),
    Case("5x5_pad2_bias_relu", (2, 6, 13, 11), (10, 6, 5, 5), padding=2, bias=True, relu=True),
    Case("7x7_stride2_odd", (1, 3, 31, 29), (8, 3, 7, 7), stride=2, padding=3),
    Case("1x7", (2, 8, 10, 12), (8, 8, 1, 7), padding=(0, 3)),
    Case("7x1", (2, 8, 12, 10), (8, 8, 7, 1), padding=(3, 0)),
    Case("11x11_stride4_odd", (1, 3, 67, 65), (16, 3, 11, 11), stride=4, padding=2),
    Case("stride_2x1", (1, 4, 11, 12), (6, 4, 3, 3), stride=(2, 1), padding=1),
    Case("dilation2", (2, 8, 17, 15), (8, 8, 3, 3), padding=2, dilation=2),
    Case("dilation_2x3", (1, 4, 19, 21), (6, 4, 3, 3), padding=(2, 3), dilation=(2, 3)),
    Case("groups2_alexnet", (1, 16, 13, 13), (24, 8, 3, 3), padding=1, groups=2, bias=True),
    Case("depthwise", (2, 16, 12, 12), (16, 1, 3, 3), padding=1, groups=16, sparsity=0.5),
    Case("depthwise_x2", (1, 8, 9, 9), (16, 1, 3, 3), stride=2, padding=1, groups=8, sparsity=0.3),
    Case("batch5", (5, 8, 8, 8), (12, 8, 3, 3), padding=1, bias=True, relu=True),
    Case("spatial_1x1", (3, 32, 1, 1), (20, 32, 1, 1), bias=True),
    Case("spatial_1x1_pad", (2, 8, 1, 1), (8, 8, 3, 3), padding=1),
    Case("asymmetric_pad", (2, 5, 10, 9), (7, 5, 3, 3), padding=(0, 1, 2, 1), bias=True),
    Case("sparsity0", (1, 8, 10, 10), (8, 8, 3, 3), padding=1, sparsity=0.0),
    Case("sparsity50", (2, 8, 10, 10), (8, 8, 3, 3), padding=1, sparsity=0.5),
    Case("sparsity99", (1, 32, 10, 10), (32, 32, 3, 3), padding=1, sparsity=0.99),
    Case("sparsity100_bias_only", (2, 8, 7, 7), (8, 8, 3, 3), padding=1, sparsity=1.0, bias=True,
         relu=True),
    Case("odd_channels_wide", (1, 7, 5, 37), (5, 7, 3, 3), padding=1, sparsity=0.8),
    # no padding: the kernel reads its input in place (no padded copy, no zero channel)
    Case("1x1_stride2_odd_bias_relu", (3, 16, 15, 15), (24, 16, 1, 1), stride=2, bias=True,
         relu=True),
    Case("3x3_valid_groups2_dilation2", (2, 8, 13, 11), (12, 4, 3, 3), groups=2, dilation=2,
         sparsity=0.7),
    Case("1x1_sparsity100_bias_only", (2, 8, 7, 7), (8, 8, 1, 1), sparsity=1.0, bias=True),
]
