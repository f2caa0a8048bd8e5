"""Fast paths over a loaded pipeline: the switches (attention, compile, fp8, step cache), the few-step
LoRA and context parallelism.
"""
