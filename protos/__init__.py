"""Protocol buffers for KV transfer and worker control, with the generated Python modules."""
