"""The study: PAMA against the standard baselines on two tasks, in code.

:mod:`.stats` (numpy/scipy statistics), :mod:`.task_sentiment` and :mod:`.task_support`
(the tasks), :mod:`.artefacts` (tiny cached models), :mod:`.protocol` (methods, jobs,
process pool, tuning), :mod:`.analysis` (results), :mod:`.report` (study.md, plots) and
:mod:`.cli` (``paretoopt study``; :mod:`.demo`, ``paretoopt demo``, is its quick form).
:mod:`.grpo_engine`, :mod:`.grpo_study` and :mod:`.grpo_report` are its GRPO engine
(``paretoopt study --engine grpo``: TRL's GRPOTrainer, its two aggregations and PAMA).
"""
