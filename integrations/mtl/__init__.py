"""Multi-task learning with a shared trunk: the training-loop pattern, an example, and the study
of docs/multitask.md (``paretoopt mtl``).

``example`` needs torch only; the study modules (``toy``, ``digits``, ``study``, ``report``,
``cost``) need the ``bench`` extra (torchjd, scikit-learn, matplotlib) and are imported on use.
"""
