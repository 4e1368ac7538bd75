"""Shared test set-up: import the project from the repository root, threads set before Paddle loads."""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import utility  # noqa: E402,F401  (sets the CPU thread count before any test imports Paddle)
