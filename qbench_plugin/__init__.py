"""qbench: a pytest plugin that benchmarks quantized text classifiers served with vLLM."""

__version__ = "0.1.0"
