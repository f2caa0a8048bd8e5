"""Edge cases of the core modules that mutation testing (`python -m tools.mutation`) found no test for."""
