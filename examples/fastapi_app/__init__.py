"""A FastAPI service on wellwon_db: see README.md beside this file."""
