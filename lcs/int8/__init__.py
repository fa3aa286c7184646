"""Integer (int8) inference: the numpy reference of the device's arithmetic (`graph`, torch-free), the
conversion of a torch network into it (`from_torch`) and its C form for the firmware kernels (`emit_c`)."""
