"""The intent tests' encoder and toy catalogue live in tests/conftest.py (shared by every test package)."""
