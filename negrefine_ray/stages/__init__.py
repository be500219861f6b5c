"""One module per pipeline stage, named after it: corpus, embed_text, mine, filter, embed_images,
score, report. Each declares the settings that determine its output and a run function that wires
the core functions, the CLIP or judge pools and the run folder; pipeline.py puts them in order."""
