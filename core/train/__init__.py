"""Fine-tuning: supervised fine-tuning's helpers and preference tuning (DPO) on its adapter."""
