"""Argument helpers of the operators that layers built on them share, so a model checks its
own arguments exactly as the operators do."""

from __future__ import annotations

from ._validation import pair

__all__ = ["pair"]
