"""Edge cases of the core modules that mutation testing (`python -m bench.mutation`) found no test for."""
