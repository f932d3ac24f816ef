"""Speed measurements for kdloss (pytest-benchmark). Not part of the test suite: see README."""
