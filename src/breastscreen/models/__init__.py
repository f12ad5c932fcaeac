"""breastscreen.models"""
