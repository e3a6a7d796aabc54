"""End-to-end and unit tests for wsbridge; the helpers here serve scripts too."""
