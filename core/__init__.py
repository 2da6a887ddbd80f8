"""The pipeline's library: configuration, data, models, training, decoding, scoring and export;
the stages in stages/ call it."""
