"""Import-only stand-in for flash-attn, for the tests that import OpenRLHF on CPU.

OpenRLHF 0.11.2 imports ``flash_attn.bert_padding`` and ``flash_attn.utils.distributed`` at
import time (for sample packing and ring attention); flash-attn cannot be built without CUDA.
The tests never pack samples, so every function here raises if it is ever called. There is
deliberately no ``flash_attn.ops``: OpenRLHF then falls back to its torch cross-entropy.
Tests put this folder on ``sys.path`` themselves; it is never installed.
"""

__version__ = "0.0.0+stub"
