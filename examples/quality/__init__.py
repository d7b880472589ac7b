"""The quality pipeline: lint, fix and re-lint a copy of a Python codebase with ruff.

pipeline.toml wires the stage functions of `stages` into a DAG that pipelined
runs sharded across its workers:

    pipelinectl run examples/quality/pipeline.toml [--env TARGET=/some/src]

Modules: `params` (run parameters from the environment), `tree` (which files,
which shard), `linter` (the ruff command line), `workdir` (the files stages
hand to each other), `report` (report.json / report.md), `stages` (the tasks).
"""
