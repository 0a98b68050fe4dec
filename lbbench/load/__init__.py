"""The open-loop load generator: schedule, client, workers, histograms; it knows only URLs, never front ends."""
