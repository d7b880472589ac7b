"""Example task modules and pipeline files that the README runs.

`examples.tasks` holds tiny demo functions for the client and CLI examples;
`examples.quality` is the real pipeline: lint, fix and re-lint a copy of a
Python codebase with ruff, sharded across pipelined's workers.
"""
