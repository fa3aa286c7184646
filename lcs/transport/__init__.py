"""Transports under `lcs.device.Device`: pyserial ports and URLs are used directly (`Device.open`); this package holds
the pieces that sit between the host and a port (`faults.FaultyPort`, a fault-injecting proxy for tests), and TVM RPC
to Linux boards (`rpc`: direct or through a tracker, and a Device-like client over a resident `lcs.runtime.Runtime`)."""
