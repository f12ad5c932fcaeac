"""Breast ultrasound system (Shen et al. 2021): bags, training recipe, validation."""
