"""The red-team seed prompts (JSON Lines, one file per category, see ``seeds.py``); no code."""
