"""breastscreen.evaluation"""
