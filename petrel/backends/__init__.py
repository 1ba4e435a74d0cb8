"""Backends: where sealed segments and large objects live (see base.Backend)."""
