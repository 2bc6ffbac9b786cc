"""What every floor uses and nothing above it defines: the names of things (``names.py``), a long
job's typed events and cancel flag (``events.py``), the compute device (``devices.py``) and a job
step run in a separate process (``processes.py``)."""
