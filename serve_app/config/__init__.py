"""Configuration: strict pydantic models of the application ``args`` and each
``user_config`` (models), and the checker of whole Serve config files (check).
"""
