"""Element types as checkpoint formats name them: safetensors codes, torch dtypes, sizes.

The merge engine speaks safetensors dtype codes (``BF16``, ``F32``...) whatever the input format;
a format module maps its own dtype names onto these codes.
"""

from __future__ import annotations

import torch

# safetensors dtype code -> (torch dtype, bytes per element, is floating point)
DTYPES: dict[str, tuple[torch.dtype, int, bool]] = {
    "F64": (torch.float64, 8, True),
    "F32": (torch.float32, 4, True),
    "F16": (torch.float16, 2, True),
    "BF16": (torch.bfloat16, 2, True),
    "F8_E4M3": (torch.float8_e4m3fn, 1, True),
    "F8_E5M2": (torch.float8_e5m2, 1, True),
    "I64": (torch.int64, 8, False),
    "I32": (torch.int32, 4, False),
    "I16": (torch.int16, 2, False),
    "I8": (torch.int8, 1, False),
    "U64": (torch.uint64, 8, False),
    "U32": (torch.uint32, 4, False),
    "U16": (torch.uint16, 2, False),
    "U8": (torch.uint8, 1, False),
    "BOOL": (torch.bool, 1, False),
}
TORCH_TO_CODE: dict[torch.dtype, str] = {v[0]: k for k, v in DTYPES.items()}
# user-facing names for output dtypes
DTYPE_NAMES: dict[str, str] = {"float32": "F32", "bfloat16": "BF16", "float16": "F16", "float64": "F64"}
CODE_TO_NAME: dict[str, str] = {v: k for k, v in DTYPE_NAMES.items()}


def tensor_view(buf: memoryview, dtype: str) -> torch.Tensor:
    """A 1-D tensor over raw little-endian bytes, without copying (bf16 included: numpy lacks it)."""
    tdtype = DTYPES[dtype][0]
    if len(buf) == 0:
        return torch.empty(0, dtype=tdtype)
    return torch.frombuffer(buf, dtype=tdtype)
