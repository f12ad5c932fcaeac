"""breastscreen.inference"""
