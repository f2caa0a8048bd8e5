"""The project's own tooling, not part of the installed package: measurement and figure scripts (GPU memory per
storage mode, host RAM of the loaders, the precision policy's cost, face-analysis speed, the preview map's fit),
the one-shot GPU check and its wheel fetcher, and the mutation-testing runner. Run them from the repository root,
e.g. `python -m tools.mutation`. The product benchmark, `fantasy bench`, lives in `fantasy/bench/`.
"""
