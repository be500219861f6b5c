"""The data side: dataset listings (ImageFolder, image lists, ImageNet val), benchmark presets,
WordNet through nltk, and the generated demo images."""
