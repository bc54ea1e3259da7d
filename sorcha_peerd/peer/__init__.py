"""The peer role: link state machine, heartbeat, replication, push subscriber (in progress)."""
