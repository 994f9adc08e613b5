"""Reading: the chunked-reader contract and chunk grid, the decoded-chunk cache, per-process file handles."""
