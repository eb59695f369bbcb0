"""rt-appliance: the real-time layer of an AI chat application as one server."""

__version__ = "0.1.0"
