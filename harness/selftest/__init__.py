"""The self-test: a catalogue of migration bugs injected into any pipeline (`bugs`) and the run that shows each is
caught (`run`)."""
