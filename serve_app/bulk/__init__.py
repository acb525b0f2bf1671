"""Offline bulk analysis, framework-free: what ``memeserve scan`` reads (items), the
rows it writes (rows), the per-item work (work), the library shared by one scan
(shared_library), its committed output parts and resume (parts) and its summary.

The Ray Data pipeline that runs these pieces is :mod:`serve_app.ops.scan`.
"""
