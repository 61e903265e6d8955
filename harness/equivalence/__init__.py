"""Whether two pipelines deliver the same batches: `diff` (tensor comparison), `identify` (windows by content),
`batches` (every batch of every epoch), `diagnose`, `everyday` (each pipeline's own loader and trainer),
`training` (loss-curve parity)."""
