"""How fast and lean each pipeline is: `timing` (the interleaved stage timings compare judges), `stages`, `scaling`,
`memory`, `bandwidth` (the copy floor) and `run` (`bench.json`)."""
