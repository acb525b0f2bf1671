"""Tracing spans, metrics, structured logs and the replica's identity: what every stage
reports about itself.
"""
