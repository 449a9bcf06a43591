"""Runnable examples of wellwon_db (not part of the installed package)."""
