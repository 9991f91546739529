"""The networks and their training: builders, input pipeline, device placement, the loop,
checkpoints.
"""
