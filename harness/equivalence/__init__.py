"""Whether two pipelines deliver the same batches: `diff` (tensor comparison), `identify` (windows by content),
`batches` (every batch of every epoch), `diagnose`, `shuffle_audit` (everyday shuffling), `training` (loss-curve
parity)."""
