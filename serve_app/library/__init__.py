"""The fingerprint library: analysed memes found again by exact and near-duplicate
fingerprints (store), persisted in a backend (backends).
"""
