"""GPU presets with published datasheet figures (dense, i.e. without 2:4 sparsity).

Bandwidths are per GPU and per direction, in bytes/s: NVLink 4 is 900 GB/s bidirectional on
H100/H200 (450 GB/s each way); H800 is cut to 400 GB/s (200 each way); NVLink 5 on Blackwell is
1.8 TB/s (900 each way). RDMA is the GPU's own NIC: ConnectX-7 at 400 Gb/s = 50 GB/s.
"""

from __future__ import annotations

from enum import StrEnum

from moeplane.api.base import ApiModel
from pydantic import Field


class HardwarePreset(StrEnum):
    H100 = "h100"
    H200 = "h200"
    H800 = "h800"
    B200 = "b200"
    GB200 = "gb200"
    CPU = "cpu"  # The embedded default: a CPU share per rank, no NVLink and no RDMA.


class HardwareSpec(ApiModel):
    name: str
    bf16_flops: float = Field(gt=0, description="Dense BF16 FLOP/s per GPU.")
    fp8_flops: float = Field(gt=0, description="Dense FP8 FLOP/s per GPU.")
    hbm_bytes: float = Field(gt=0, description="Device memory per GPU, bytes.")
    hbm_bytes_per_s: float = Field(gt=0, description="Device memory bandwidth per GPU.")
    nvlink_bytes_per_s: float = Field(gt=0, description="Scale-up bandwidth per GPU, one direction.")
    rdma_bytes_per_s: float = Field(gt=0, description="Scale-out NIC bandwidth per GPU, one direction.")
    gpus_per_node: int = Field(gt=0)
    nvlink_domain_gpus: int = Field(gt=0, description="GPUs that share one NVLink domain.")


_G = 1e9
_T = 1e12

HARDWARE_PRESETS: dict[HardwarePreset, HardwareSpec] = {
    HardwarePreset.H100: HardwareSpec(
        name="h100", bf16_flops=989e12, fp8_flops=1979e12, hbm_bytes=80 * _G,
        hbm_bytes_per_s=3.35 * _T, nvlink_bytes_per_s=450 * _G, rdma_bytes_per_s=50 * _G,
        gpus_per_node=8, nvlink_domain_gpus=8,
    ),
    HardwarePreset.H200: HardwareSpec(
        name="h200", bf16_flops=989e12, fp8_flops=1979e12, hbm_bytes=141 * _G,
        hbm_bytes_per_s=4.8 * _T, nvlink_bytes_per_s=450 * _G, rdma_bytes_per_s=50 * _G,
        gpus_per_node=8, nvlink_domain_gpus=8,
    ),
    HardwarePreset.H800: HardwareSpec(
        name="h800", bf16_flops=989e12, fp8_flops=1979e12, hbm_bytes=80 * _G,
        hbm_bytes_per_s=3.35 * _T, nvlink_bytes_per_s=200 * _G, rdma_bytes_per_s=50 * _G,
        gpus_per_node=8, nvlink_domain_gpus=8,
    ),
    HardwarePreset.B200: HardwareSpec(
        name="b200", bf16_flops=2250e12, fp8_flops=4500e12, hbm_bytes=180 * _G,
        hbm_bytes_per_s=8 * _T, nvlink_bytes_per_s=900 * _G, rdma_bytes_per_s=50 * _G,
        gpus_per_node=8, nvlink_domain_gpus=8,
    ),
    HardwarePreset.GB200: HardwareSpec(
        name="gb200", bf16_flops=2500e12, fp8_flops=5000e12, hbm_bytes=186 * _G,
        hbm_bytes_per_s=8 * _T, nvlink_bytes_per_s=900 * _G, rdma_bytes_per_s=50 * _G,
        gpus_per_node=4, nvlink_domain_gpus=72,
    ),
    HardwarePreset.CPU: HardwareSpec(
        name="cpu", bf16_flops=2e11, fp8_flops=2e11, hbm_bytes=4 * 2**30,
        hbm_bytes_per_s=20 * _G, nvlink_bytes_per_s=5 * _G, rdma_bytes_per_s=1 * _G,
        gpus_per_node=2, nvlink_domain_gpus=2,
    ),
}


def hardware_preset(name: str | HardwarePreset) -> HardwareSpec:
    """The figures of a GPU preset; raises ValueError listing the known presets."""
    try:
        return HARDWARE_PRESETS[HardwarePreset(name)]
    except ValueError:
        known = ", ".join(p.value for p in HardwarePreset)
        raise ValueError(f"unknown hardware preset {name!r}; known presets: {known}") from None
