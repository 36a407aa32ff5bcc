"""Training loops (one per stage), checkpoints, resume and multi-device plumbing."""
