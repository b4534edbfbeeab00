"""Training: the two-stage pipeline from data to evaluation."""
