"""Answering with PyTorch: batching, greedy, beam and sampled decoding, MBR, the answer-only
repetition rules, the static-cache CUDA-graph path and the answer length."""
