"""Durable storage: the mailbox log, blob storage and the user directory."""
