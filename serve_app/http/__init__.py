"""The HTTP surface: the FastAPI app and its routes (api), the request flow over the
graph's handles (service), bodies, headers, middleware, auth, the one error mapping,
OpenAPI, SSE, wire models and the Python client.
"""
