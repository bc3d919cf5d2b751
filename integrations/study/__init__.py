"""The study: PAMA against the standard baselines on two tasks, in code.

:mod:`.stats` (numpy/scipy statistics), :mod:`.task_sentiment` and :mod:`.task_support`
(the tasks), :mod:`.artefacts` (tiny cached models), :mod:`.protocol` (methods, jobs,
process pool, tuning), :mod:`.analysis` (results), :mod:`.report` (study.md, plots) and
:mod:`.cli` (``paretoopt study``; :mod:`.demo`, ``paretoopt demo``, is its quick form).
"""
