"""``bigstore demo``: the main job, one part per capability (weights, offload, datasets)."""
