"""Training: stage 0 (vision tower), stage 1 (region pathway), the recipes, and `make train-toy`."""
