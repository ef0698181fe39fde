"""Runtime authorization with Cedar: policy engine, request building, the authorize stage and policy CLI."""
