"""A tuned comparison of optimizers, the protocol a reviewer accepts (AlgoPerf, DeepOBS):
``python -m dualadam.compare experiment=<study> [overrides]`` or ``make compare STUDY=<study>``.

1. tune: the same number of trials per optimizer (``search``: Optuna's quasi-random or TPE sampler over
   ``configs/search_space/<optimizer>.yaml``), one seed, scored by the final validation metric;
2. select each optimizer's best trial;
3. confirm: rerun each selection at N >= 5 fresh seeds shared across optimizers;
4. report: ``<results>/<study>/protocol.json`` and the tables of the confirmation runs.

Settings: ``configs/compare.yaml`` (``compare.*``) and ``configs/hparams_search/`` (the sampler).
"""
