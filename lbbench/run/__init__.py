"""The experiment: the phase loop, one phase's steps, the live view and the zero-load probe."""
