"""Label scoring: packing rows, the shared-prefix forward, the lexical model and the readout."""
