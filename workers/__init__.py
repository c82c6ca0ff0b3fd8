"""What a host needs to run its worker: queues derived from the targets assigned to it."""
