"""Controlled-variable data derivation: rewrite documents into variants with an LLM backend."""
