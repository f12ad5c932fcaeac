"""breastscreen.preprocess"""
