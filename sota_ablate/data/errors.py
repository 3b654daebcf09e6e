"""The one exception of the data package: a bad dataset, path, download or configuration value.

Every message names the problem and the fix (which path to pass, which option to change).
"""

from __future__ import annotations


class DataError(ValueError):
    """The data cannot be listed, downloaded, decoded or configured as asked; the message says how to fix it."""
