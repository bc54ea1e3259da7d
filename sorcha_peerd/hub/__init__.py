"""The hub role: sessions, heartbeat answers, sync streams, push fan-out (in progress)."""
