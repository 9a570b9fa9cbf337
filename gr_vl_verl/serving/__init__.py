"""Serving the guard: vLLM's OpenAI-compatible server for a checkpoint (``server``) and the client that asks it
exactly what the in-process guard asks its engine (``client``); docs/guard.md, "Serving"."""
