"""Outbound mail: pure decisions (classification, warm-up, retry, DSNs, records).

Nothing here imports Ray; nothing but ``smtp_client`` (the SMTP client of the
senders) opens sockets. ``actors/spool.py`` and ``actors/sender.py`` are the I/O
around it.
"""
