//! The embedded provider: replicas are local child processes.
