"""Files and config trees: the source and its streaming tar writer and safe extractor."""
