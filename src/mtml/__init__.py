"""mtml: reproducible few-shot, multi-task and multimodal meta-learning."""

__version__ = "0.1.0"
