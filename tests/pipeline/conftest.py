"""The pipeline tests' fakes live in tests/conftest.py (shared by every test package)."""
