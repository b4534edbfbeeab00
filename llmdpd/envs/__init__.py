"""Environments: goal-visible Meta-World tasks and their scripted experts."""
