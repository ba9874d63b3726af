"""The labelled detection corpus: recorded and real theft and benign scenarios (see README.md here)."""
