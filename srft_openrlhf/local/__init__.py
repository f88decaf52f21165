"""One-machine SRFT backend: training engine (torch or DeepSpeed), trainer loop, rollout
batches, async overlap, checkpoints and logging. Generation, models, data and the run folder
are the shared layer below (``srft_openrlhf.generation``, ``models``, ``data``, ``runs``).

Heavy dependencies (vllm, deepspeed) are imported inside the functions that need them.
"""
