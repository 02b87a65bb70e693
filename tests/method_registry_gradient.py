"""Entries of the interoperability suite for the gradient-based methods."""

from __future__ import annotations

from method_registry import Method

GRADIENT_METHODS: list[Method] = []
