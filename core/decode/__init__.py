"""Answering with PyTorch: `answer.generate_responses` (a loaded model answers rows), batching,
greedy, beam and sampled decoding, MBR, the answer-only repetition rules, the static-cache
CUDA-graph path and the answer length. (This file imports nothing: the export's runtime reads
`results` where torch is not installed.)"""
