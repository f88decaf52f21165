"""One-machine SRFT backend: generation (vLLM or HF), training engine (torch or DeepSpeed),
trainer loop, toy task, async overlap, checkpoints and logging.

Heavy dependencies (vllm, deepspeed) are imported inside the functions that need them.
"""
