"""breastscreen.data"""
