"""Import-only stand-in for flash-attn, for OpenRLHF on CPU (``srft_openrlhf.openrlhf.cpu_compat``).

OpenRLHF 0.11.2 imports ``flash_attn.bert_padding`` and ``flash_attn.utils.distributed`` at
import time (for sample packing and ring attention); flash-attn cannot be built without CUDA.
The SRFT launcher refuses packing, so every function here raises if it is ever called. There
is deliberately no ``flash_attn.ops``: OpenRLHF then falls back to its torch cross-entropy.
Only the CPU layer puts this folder on ``PYTHONPATH``.
"""

__version__ = "0.0.0+srft-cpu-stub"
