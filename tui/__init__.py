"""Textual terminal app behind `llava-local chat`."""
