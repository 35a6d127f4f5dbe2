"""Multi-task meta-learning (Lekkala & Itti, "Attentive Feature Reuse for Multi Task Meta
learning"): task descriptors, subtask sampling, learners and the `multitask` experiment kind.
See docs/multitask.md."""
