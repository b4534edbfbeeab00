"""Environments: goal-visible Meta-World tasks, their scripted experts, Minari datasets' own environments,
torchrl wrappers of both, and off-screen rendering."""

from llmdpd.envs.rendering import select_gl_backend

# Before anything imports mujoco, which reads the backend once and fails to import without its library.
select_gl_backend()
