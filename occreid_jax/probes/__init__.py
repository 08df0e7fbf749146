"""MAT's probes: ground-truth flows from the synthetic joints (`reference_flows.py`) and the
flow probe and part records that score what MAT's consistency loss rewards (`flow_probe.py`)."""
