"""The results folder: its one writer and reader, the per-front-end summaries and the theory fit of a run."""
