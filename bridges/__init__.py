"""Sources bridged into the central Kafka log: one module per source behind one interface.

Installs as ``headwater.bridges``. A source message is acknowledged only after Kafka
acknowledged every event made from it.
"""
