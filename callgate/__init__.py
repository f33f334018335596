"""callgate: call control and real-time billing for Asterisk."""

__version__ = "0.1.0"
