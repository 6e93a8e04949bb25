"""Long-term memory: categories and merge rules, extraction (agent, LLM, offline), search."""
