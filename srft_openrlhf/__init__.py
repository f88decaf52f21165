"""SRFT (Supervised Reinforcement Fine-Tuning, Fu et al. 2025) as an extension of OpenRLHF.

Importing this package is light: it never imports ray, vllm, deepspeed or openrlhf;
the backends import them when they start.
"""

__version__ = "0.1.0"
