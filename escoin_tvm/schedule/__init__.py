"""Schedules of the sparse direct convolution: one rule per file, as in TVM's dlight."""
from .cpu import CpuConfig, default_cpu_config, schedule_cpu
from .gpu import GpuConfig, default_gpu_config, schedule_gpu

__all__ = ["CpuConfig", "default_cpu_config", "schedule_cpu",
           "GpuConfig", "default_gpu_config", "schedule_gpu"]
