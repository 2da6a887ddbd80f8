"""Export for the edge: the merged, quantized ONNX Runtime GenAI model and the runtime that answers with it on a CPU."""
