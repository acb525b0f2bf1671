"""Helpers shared by test modules (not tests themselves)."""

import pytest

# Shared contract tests assert in this package: let pytest explain their failures.
pytest.register_assert_rewrite("tests.support.library_contract")
