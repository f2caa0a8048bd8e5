"""The product benchmark, `fantasy bench`: `--gpu` times the full-size DiT, encoders and VAE (random weights, no
download), `--cpu` the tiny preset end to end. The `--tiny` dry runs of the GPU code run on a CPU in the tests.

The project's own measurement scripts (GPU memory per storage mode, host RAM of the loaders, the precision
policy's cost, the one-shot GPU check, mutation testing) live in `tools/` of the repository, not in the package.
"""
