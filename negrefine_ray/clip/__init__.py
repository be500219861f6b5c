"""The CLIP side: open_clip model loading and precision, text and image encoding, their Ray actors,
image preprocessing to uint8 crops, and the persistent embedding caches."""
