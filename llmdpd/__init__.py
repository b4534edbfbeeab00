"""llmdpd: LLM-Driven Policy Diffusion for offline multi-task RL that generalises to unseen tasks."""

__version__ = "0.1.0"
