"""The fuzz of #27 item 4: specs from the CRD schemas, mutated, through the real stack."""
