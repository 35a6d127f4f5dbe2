"""Multimodal task distributions (experiment `kind: multimodal`).

Every task comes from one of several datasets ("modes"): the experiment's `dataset` is mode 0
and `modes: [...]` are modes 1, 2, ... A meta-batch mixes modes with the probabilities
`options.mode_mix`; images of every mode are brought to `options.image_shape` once, when a
stage loads them. Validation and test episodes are fixed per mode, and evaluation reports
each mode and all modes together.

Modules: `config` (options), `data` (one image shape for all modes), `sampler` (mode-aware
banks and the training stream), `episodes`, `train`, `evaluate`, and `kind` (registration).
"""
