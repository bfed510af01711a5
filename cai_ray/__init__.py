"""cai-ray: Constitutional AI (Bai et al. 2022) on Ray, vLLM and DeepSpeed."""

__version__ = "0.1.0"
