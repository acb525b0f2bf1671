"""The graph's stage work that composes several concepts: preparing a request for the
engine (prepare).
"""
