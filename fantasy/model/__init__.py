"""The algorithm on diffusers: the audio adapter, the paper's identity and motion modules, the audio
windows, the release's sampler and guidance, the pipeline, progressive decoding, prompts, the DiT's
numerics and the live preview. Imports media, faces and errors only: no weights, app or CLI code.
"""
