"""insectarium benchmarks (issue 6): ``python -m bench [--quick] [--only NAME …] [--repeat N]``.

Each benchmark starts what it needs (private broker and database, our services as ``dl-serve``
processes, the baselines of :mod:`bench.baselines`), measures with warm-up and repetitions, and
adds rows to one report: a rich table on the terminal and ``bench/results/<timestamp>.json``.
Targets are judged here, never in the test suite.  See ``bench/README.md``.
"""
