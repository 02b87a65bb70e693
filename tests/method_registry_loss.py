"""Entries of the interoperability suite for the loss-based methods."""

from __future__ import annotations

from method_registry import Method

LOSS_METHODS: list[Method] = []
