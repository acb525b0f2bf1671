"""Images: safe decoding and GLM geometry (imaging), perceptual fingerprints and their
Hamming index, and OCR.
"""
