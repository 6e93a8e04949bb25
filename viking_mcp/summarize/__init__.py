"""Summarisers for commit Phase 2: agent-supplied, LLM endpoint (later), offline extractive."""
