"""The pcloud guest agent: runs resources inside one assembly and reports on them."""

__version__ = "0.1.0"
