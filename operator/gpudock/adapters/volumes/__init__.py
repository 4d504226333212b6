"""The SizedVolume backends: base.py is the seam (the VolumeBackend protocol and the
tools backends share), one module per backend, and registry.py the one table that
maps a --volume-backend name to its backend (a new backend: one module and one line
there)."""
