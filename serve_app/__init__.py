"""memeserve: a Ray Serve graph that reads internet memes and returns structured JSON."""

__version__ = "0.1.0"
