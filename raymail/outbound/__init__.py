"""Outbound mail: pure decisions (classification, warm-up, retry, DSNs, records).

Nothing here imports Ray or opens sockets; ``actors/spool.py`` and
``actors/sender.py`` are the I/O around it.
"""
