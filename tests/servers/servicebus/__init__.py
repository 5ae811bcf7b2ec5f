"""A project-owned AMQP 1.0 Azure Service Bus test server (see ``server.py``)."""
