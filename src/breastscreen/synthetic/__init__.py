"""breastscreen.synthetic"""
