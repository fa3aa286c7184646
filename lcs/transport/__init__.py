"""How the host reaches a board. `board.py` is the one interface every board offers (hello / set_level / infer /
upload / stats) and `open_board`, which picks and opens one from --device / --sim / --rpc / --tracker; `launch.py`
starts simulated boards (host-sim on a pty, QEMU on TCP); `rpc.py` turns --rpc / --tracker into a TVM RPC session;
`faults.py` is a fault-injecting serial proxy for tests. Serial boards speak `lcs.protocol` through `lcs.device`."""
