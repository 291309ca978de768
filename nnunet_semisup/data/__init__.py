"""Unlabeled and benchmark data handling."""
