"""Long-term memory: categories and merge rules, extraction (agent, LLM, offline), search."""

# The eight categories, in the order they are listed (memory/categories.py has their rules).
# Here rather than in models.py so that the command line can offer them without importing
# the models.
MEMORY_CATEGORIES = ("profile", "preferences", "entities", "events", "cases", "patterns", "tools", "skills")
