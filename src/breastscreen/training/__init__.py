"""breastscreen.training"""
