"""Training: the base and incremental steps and their loop (steps), the settings and presets
(settings), training crops and their augmentation (crops, augment), and data-parallel training
(distributed). ``settings`` imports no PyTorch, so the command line's help stays fast."""
