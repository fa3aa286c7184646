"""Transports under `lcs.device.Device`: pyserial ports and URLs are used directly (`Device.open`); this package holds
the pieces that sit between the host and a port (`faults.FaultyPort`, a fault-injecting proxy for tests)."""
