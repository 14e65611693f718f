"""Placeholder: replaced shortly."""
