"""Intermediate-task selection: PET task embeddings (TuPaTE), TextEmb/TaskEmb, ranking metrics, ground truth."""
