"""`make bench`: throughput figures of llmdpd against bare loops of the same work."""
