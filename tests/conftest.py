"""Test-suite configuration. Having this file here puts ``tests/`` on ``sys.path`` (pytest's
default import mode), so test modules in subfolders can share plain helper modules such as
``binary_hmm``."""
