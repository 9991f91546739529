"""The networks and their training: builders, input pipeline, device placement, the
prepared data on the device, the stage recipe (what a stage builds before `fit`), the
loop, checkpoints.
"""
