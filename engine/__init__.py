"""The engine's per-event logic, framework-free: what happens to an event between the source
and the sinks (admission, fault isolation), called by the dataflow in ``flows/`` and by the
bare loop alike."""
