"""Training, data and evaluation of FRFSR models (not part of the installed ``frfsr`` package).

Subpackages: :mod:`frfsr_train.training` (the restoration-net trainer, the texture encoder's
contrastive training, their configuration), :mod:`frfsr_train.data` (photo sources, views,
degradations, dataset layouts); modules :mod:`frfsr_train.evaluate` (``python
train/evaluate.py``) and :mod:`frfsr_train.real_inputs` (the held-out real-input kinds).
The scripts in ``train/`` import it from their own folder; tests put ``train/`` on the path.
"""
