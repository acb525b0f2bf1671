"""Thin Ray Serve wrappers around the framework-free logic in :mod:`serve_app`."""
