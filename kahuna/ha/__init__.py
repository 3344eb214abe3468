"""The active/passive pair: a lease on MongoDB, roles, and fencing of every write (issue 11).

`node.Node` holds the role; `fenced.FencedStore` is the store every write goes through;
`lease.LeaseStore` is the lease document. `kahuna.server.run` wires them.
"""
