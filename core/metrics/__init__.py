"""The score: ROUGE as the host computes it, and the loops it looks for in answers."""
