"""Encryption keys over their life: how old each is, rotation, what depends on each, and re-encryption onto the new key."""
